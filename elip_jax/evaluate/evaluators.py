"""Evaluators built once from config and run as `run(params) -> metrics`, as big_vision's trainers do.

config.evals is a dict of named evaluators, each with a `type` from EVALUATORS and its own dataset, split,
data_dir, batch_size, every_steps (0: only at the end of training) and keys:
    evals.cifar10 = dict(type="zeroshot_classification", dataset="cifar10", split="test", batch_size=256,
                         every_steps=5000, label_key="label")
    evals.coco = dict(type="zeroshot_retrieval", dataset="coco_captions", split="val", text_key="captions")
The model is fitted to the evaluation's reduction (a method of elip_jax.reduction.evaluation_methods(): text-guided
ones do not prune there, ELIP never guides with the ground truth; random draws per-example keys from seed 0) once,
when the evaluator is built.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from elip_jax.reduction import evaluation_methods

# the keys every evaluator takes, with their defaults; a type adds its own keys (EVALUATORS[type].keys)
COMMON_KEYS = dict(type="", dataset="", split="test", data_dir="", batch_size=256, every_steps=0, image_key="image",
                   reduction="none")


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
    task: str  # elip_jax.evaluate.evaluate's task
    keys: dict  # the type's own config keys and their defaults


EVALUATORS = {
    "zeroshot_classification": EvaluatorType("zeroshot_classification", dict(label_key="label")),
    "zeroshot_retrieval": EvaluatorType("zeroshot_retrieval", dict(text_key="")),  # "": the dataset's default
}


class Evaluator:
    """One named evaluation: `due(step, num_steps)` says when, `run(params)` returns its metrics."""

    def __init__(self, name: str, model, settings: dict):
        self.name, self.model, self.settings = name, model, settings
        self.kind = EVALUATORS[settings["type"]]
        self.every_steps = settings["every_steps"]

    def due(self, step: int, num_steps: int) -> bool:
        """At its period during training (not at the last step) and always at the end."""
        if step >= num_steps:
            return True
        return bool(self.every_steps) and step % self.every_steps == 0

    def run(self, params) -> dict:
        from elip_jax.evaluate.evaluator import evaluate
        s = self.settings
        keys = {k: s[k] for k in self.kind.keys if s[k]}
        result = evaluate(self.model, {"params": params}, task=self.kind.task, dataset=s["dataset"],
                          split=s["split"], data_dir=s["data_dir"] or None, batch_size=s["batch_size"],
                          image_key=s["image_key"], compute_flops=False, **keys)
        return {k: float(v) for k, v in result["metrics"].items()}


def settings_of(name: str, entry) -> dict:
    """An evaluator's settings with defaults filled in; ValueError naming `config.evals.NAME.KEY` when bad."""
    entry = dict(entry)
    kind = entry.get("type")
    if kind not in EVALUATORS:
        raise ValueError(f"config.evals.{name}.type = {kind!r} is invalid: expected one of {sorted(EVALUATORS)}")
    allowed = {**COMMON_KEYS, **EVALUATORS[kind].keys}
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ValueError(f"config.evals.{name}: unknown key(s) {unknown} for {kind}: expected {sorted(allowed)}")
    settings = {**allowed, **entry}
    for key in ("batch_size", "every_steps"):
        value, minimum = settings[key], 1 if key == "batch_size" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"config.evals.{name}.{key} = {value!r} is invalid: expected an int >= {minimum}")
    if settings["reduction"] not in evaluation_methods():
        raise ValueError(f"config.evals.{name}.reduction = {settings['reduction']!r} is invalid: expected one of "
                         f"{evaluation_methods()}")
    return settings


def validate_evals(evals) -> None:
    for name, entry in (evals or {}).items():
        settings_of(name, entry)


def build_evaluators(evals, model, *, default_dataset: str = "", default_data_dir: Optional[str] = None) -> list:
    """Evaluator objects for config.evals, in its order. An empty dataset is `default_dataset` (the training
    data, read from `default_data_dir`); the model is fitted to each distinct evaluation reduction once."""
    from elip_jax.evaluate.evaluator import with_reduction
    models, built = {}, []
    for name, entry in (evals or {}).items():
        settings = settings_of(name, entry)
        if not settings["dataset"]:
            settings.update(dataset=default_dataset, data_dir=default_data_dir or "")
        if settings["reduction"] not in models:
            models[settings["reduction"]] = with_reduction(model, settings["reduction"])
        built.append(Evaluator(name, models[settings["reduction"]], settings))
    return built
