"""Zero-shot classification of a whole split: sharded image encoding against fixed class embeddings."""
from __future__ import annotations

import functools
from typing import Iterable, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from elip_jax.evaluate import sharding
from elip_jax.evaluate.extract import encode_image_program, examples_per_second, run_image_program, top_k_classes
from elip_jax.evaluate.metrics import classification_metrics

TOP_K = 5


@functools.lru_cache(maxsize=16)
def classify_program(model, num_classes: int, seed: int = 0):
    """jit((variables, uint8 images, example indices, class embeddings [C, E]) -> {'top_classes': [B, min(5, C)]});
    seed: of the per-example keys of a method that draws at evaluation (random)."""
    encode = encode_image_program(model, seed)
    k = min(TOP_K, num_classes)

    def classify(variables, images, index, class_embeddings):
        logits = encode(variables, images, index) @ class_embeddings.T  # cosine similarities; the scale changes no rank
        return {"top_classes": top_k_classes(logits, k)}

    return jax.jit(classify)


def evaluate_classification(model, variables, batches: Iterable[dict], class_embeddings: np.ndarray, mesh: Mesh,
                            label_to_class: Optional[np.ndarray] = None, description: str = "zero-shot",
                            seed: int = 0) -> dict:
    """CLIP_benchmark's classification metrics for every example the eval iterator `batches` yields.

    class_embeddings: [C, E] from `zeroshot_classifier`. label_to_class maps the dataset's label ids to
    classifier rows (identity when None). seed: of the per-example keys of a method that draws at evaluation
    (random). Returns the metrics plus 'num_examples' and 'examples_per_second'.
    """
    class_embeddings = np.asarray(class_embeddings, np.float32)
    program = classify_program(model, len(class_embeddings), seed)
    results, seconds = run_image_program(
        program, sharding.replicate(variables, mesh), batches,
        extra_args=(sharding.replicate(class_embeddings, mesh),), description=description)
    labels = results["labels"].astype(np.int64)
    if label_to_class is not None:
        label_to_class = np.asarray(label_to_class)
        if labels.min() < 0 or labels.max() >= len(label_to_class):
            raise ValueError(f"dataset labels must be in [0, {len(label_to_class)}); got values in "
                             f"[{labels.min()}, {labels.max()}]")
        labels = label_to_class[labels]
    metrics = classification_metrics(results["top_classes"], labels, len(class_embeddings))
    count = len(labels)
    return {**metrics, "num_examples": count,
            "examples_per_second": examples_per_second(count, results["_steps"], seconds)}
