"""The Python entry points: evaluate a (model, variables) pair on a TFDS split, one schedule or a sweep.

The trainer calls `evaluate` on the model it is training; the CLI adds model loading and the JSON file.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from jax.sharding import Mesh

from elip_jax.evaluate import sources
from elip_jax.evaluate.classifier import zeroshot_classifier
from elip_jax.evaluate.classnames import ZeroShotPrompts, zeroshot_prompts
from elip_jax.evaluate.flops import image_flops_per_image
from elip_jax.evaluate.results import TASKS, describe_reduction
from elip_jax.evaluate.retrieval import evaluate_retrieval
from elip_jax.evaluate.sharding import data_mesh
from elip_jax.evaluate.zeroshot import evaluate_classification


def with_reduction(model, reduction, variables: Optional[dict] = None, seed: int = 0):
    """The same CLIP architecture with another token-reduction schedule; with `variables`, (model, variables)
    fitted to it.

    reduction: as `elip_jax.create_model` takes it (a method name, a dict of make_schedule arguments, a
    ReductionSchedule). A method may own parameters (a scorer's, learnable tokens): pass the variables, and
    those the new model's init creates are taken from them when present (e.g. a trained predictor's), else
    initialised with `seed`; the backbone is kept as is and parameters only the old schedule had are dropped.
    The model's learnable visual tokens stay unless the options name their own count (models.keeping_tokens).
    """
    from elip_jax.models import CLIP, keeping_tokens, schedule_for
    new_model = CLIP(model.config, schedule_for(model.config, keeping_tokens(reduction, model.reduction)))
    if variables is None:
        return new_model
    from elip_jax.checkpoints.params import fit_variables
    return new_model, fit_variables(new_model, variables, seed)


def classifier_for(model, variables, dataset: str, *, data_dir: Optional[str] = None, label_key: str = "label",
                   mesh: Optional[Mesh] = None, text_batch_size: int = 1024) -> tuple[ZeroShotPrompts, np.ndarray]:
    """The dataset's prompts and class embeddings [C, E]: computed once, reusable across image schedules."""
    dataset, data_dir = sources.resolve_dataset(dataset, data_dir)
    prompts = zeroshot_prompts(dataset, sources.tfds_label_names(dataset, data_dir, label_key))
    mesh = mesh or data_mesh()
    return prompts, zeroshot_classifier(model, variables, prompts, mesh, batch_size=text_batch_size)


def evaluate(model, variables, *, task: str, dataset: str, split: str = "test", data_dir: Optional[str] = None,
             batch_size: int = 256, mesh: Optional[Mesh] = None, image_key: str = "image",
             label_key: str = "label", text_key: Optional[str] = None,
             classifier: Optional[tuple[ZeroShotPrompts, np.ndarray]] = None,
             captions: Optional[Sequence[Sequence[str]]] = None, batches=None,
             compute_flops: bool = True, seed: int = 0) -> dict:
    """Zero-shot classification or retrieval of `model` (with its own reduction schedule) on a TFDS split.

    Every process must call this with the same arguments. batch_size is global (a multiple of the device
    count). classifier / captions / batches may be given to reuse or replace what would be loaded
    (`classifier_for`, `sources.read_captions`, `sources.eval_batches`; batches may be a zero-argument
    callable that makes the iterator). seed: where a method that draws at evaluation (random) takes its
    per-example keys from (fold_in(PRNGKey(seed), example index)). Returns {'metrics': CLIP_benchmark's
    metrics, 'num_examples', 'skipped_examples', 'examples_per_second', 'flops_per_image',
    'reduction'}.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    mesh = mesh or data_mesh()
    dataset, data_dir = sources.resolve_dataset(dataset, data_dir)
    if callable(batches):  # a factory: a sweep needs a fresh pass over the data per schedule
        batches = batches()
    if batches is None:
        batches = sources.eval_batches(
            dataset, split, data_dir=data_dir, image_size=model.config.image_size, batch_size=batch_size,
            mesh=mesh, image_key=image_key, label_key=label_key if task == "zeroshot_classification" else None)
    if task == "zeroshot_classification":
        prompts, class_embeddings = classifier or classifier_for(model, variables, dataset, data_dir=data_dir,
                                                                 label_key=label_key, mesh=mesh)
        outcome = evaluate_classification(model, variables, batches, class_embeddings, mesh,
                                          label_to_class=prompts.label_to_class, description=dataset, seed=seed)
    else:
        if captions is None:
            captions = sources.read_captions(dataset, split, data_dir, text_key or sources.default_text_key(dataset))
        outcome = evaluate_retrieval(model, variables, batches, captions, mesh, description=dataset, seed=seed)
    metrics = {k: v for k, v in outcome.items() if k not in ("num_examples", "num_texts", "examples_per_second")}
    skipped = getattr(batches, "skipped", None)  # unreadable images: not counted, but reported
    return {"metrics": metrics, "num_examples": outcome["num_examples"],
            "skipped_examples": {k: int(v) for k, v in skipped.items() if v} if skipped else {},
            "examples_per_second": outcome["examples_per_second"],
            "flops_per_image": image_flops_per_image(model, variables, seed=seed) if compute_flops else None,
            "reduction": describe_reduction(model.reduction, seed)}


def parse_keep_schedules(text: str) -> list[tuple[float, ...]]:
    """'1.0,1.0,1.0;0.9,0.65,0.4' -> [(1.0, 1.0, 1.0), (0.9, 0.65, 0.4)]."""
    schedules = []
    for part in typed_keep_schedules(text):
        try:
            schedules.append(tuple(float(r) for r in part.split(",")))
        except ValueError:
            raise ValueError(f"a keep schedule is comma-separated ratios such as '0.9,0.65,0.4'; got {part!r}")
    if not schedules:
        raise ValueError("the reduction sweep needs at least one keep schedule, e.g. '1.0,1.0,1.0;0.9,0.65,0.4'")
    return schedules


def typed_keep_schedules(text: str) -> list[str]:
    """'1.0,1.0,1.0; 0.9,0.65,0.4' -> ['1.0,1.0,1.0', '0.9,0.65,0.4']: each schedule as the user wrote it."""
    return [part for part in (p.strip() for p in text.split(";")) if part]


def reduction_sweep(model, variables, schedules: Sequence, *, method: str = "evit",
                    begin_layers: Optional[Sequence[int]] = None, task: str, dataset: str,
                    data_dir: Optional[str] = None, mesh: Optional[Mesh] = None, label_key: str = "label",
                    **evaluate_kwargs) -> list[dict]:
    """`evaluate` once per schedule of `method`; class embeddings / captions are computed once.

    schedules: what the method's sweep varies, one entry per run: keep-ratio tuples for the methods that prune
    between blocks ((0.9, 0.65, 0.4)), or dicts of make_schedule options ({'r': 9}, {'r': 16, 'decreasing':
    True}, {'keep': (38,)}); begin_layers applies to keep-ratio entries. Each model keeps `model`'s learnable
    tokens and its method's parameters from `variables` (`with_reduction`). Returns one `evaluate` result per
    schedule, in order. Schedules are validated before anything runs.
    """
    mesh = mesh or data_mesh()
    runs = [with_reduction(model, sweep_options(method, entry, begin_layers), variables) for entry in schedules]
    dataset, data_dir = sources.resolve_dataset(dataset, data_dir)
    shared = {}
    if task == "zeroshot_classification":
        shared["classifier"] = classifier_for(model, variables, dataset, data_dir=data_dir, label_key=label_key,
                                              mesh=mesh)
    elif "captions" not in evaluate_kwargs:
        text_key = evaluate_kwargs.pop("text_key", None) or sources.default_text_key(dataset)
        shared["captions"] = sources.read_captions(dataset, evaluate_kwargs.get("split", "test"), data_dir,
                                                   text_key)
    return [evaluate(m, v, task=task, dataset=dataset, data_dir=data_dir, mesh=mesh, label_key=label_key,
                     **shared, **evaluate_kwargs) for m, v in runs]


def sweep_options(method: str, entry, begin_layers: Optional[Sequence[int]] = None) -> dict:
    """One sweep entry as make_schedule options: a dict is taken as is, a sequence is keep ratios."""
    if isinstance(entry, dict):
        return {"method": method, **entry}
    return {"method": method, "keep_ratios": tuple(entry),
            **({"begin_layers": tuple(begin_layers)} if begin_layers else {})}
