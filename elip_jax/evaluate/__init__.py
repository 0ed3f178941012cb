"""Zero-shot evaluation on TFDS datasets: classification and image-text retrieval, CLIP_benchmark-compatible,
sharded over every device of every process, and aware of the image tower's token-reduction schedule.

Modules, one job each: prompt_data (OpenAI class names and templates, TFDS label names), classnames (which
prompts a dataset gets, in TFDS label order), classifier (class embeddings), sharding (mesh and host<->device),
extract (the sharded loops), metrics (CLIP_benchmark's definitions), zeroshot / retrieval (the two tasks),
flops (XLA cost analysis), sources (data access), results (JSON and tables), evaluator (Python API), cli.
"""
from elip_jax.evaluate.classifier import class_embeddings_from_prompts, zeroshot_classifier
from elip_jax.evaluate.classnames import ZeroShotPrompts, known_datasets, zeroshot_prompts
from elip_jax.evaluate.evaluator import (classifier_for, evaluate, parse_keep_schedules, reduction_sweep,
                                         with_reduction)
from elip_jax.evaluate.flops import image_flops_per_image
from elip_jax.evaluate.metrics import classification_metrics, mean_per_class_recall, retrieval_metrics
from elip_jax.evaluate.retrieval import evaluate_retrieval
from elip_jax.evaluate.sharding import data_mesh
from elip_jax.evaluate.zeroshot import evaluate_classification

__all__ = ["ZeroShotPrompts", "class_embeddings_from_prompts", "classification_metrics", "classifier_for",
           "data_mesh", "evaluate", "evaluate_classification", "evaluate_retrieval", "image_flops_per_image",
           "known_datasets", "mean_per_class_recall", "parse_keep_schedules", "reduction_sweep",
           "retrieval_metrics", "with_reduction", "zeroshot_classifier", "zeroshot_prompts"]
