"""The study's runs: one (regime, method, seed) each, trained by elip_jax.train in DIR/runs/NAME.

Run indices depend only on the regimes, methods and seeds (never on measurements), so `--runs 0-5` or
`--shard 1/3` name the same runs on every host before anything is measured. Within a regime the order is
seed-major (every method's seed 0 first), so a study cut short still compares every method on the same seeds.

Regimes:
    equal_steps  every method at the config's batch and steps
    equal_flops  every method at its largest batch for the memory budget (measure.py), for the training FLOPs of
                 the baseline's equal-steps run (fewer steps when the batch grows)
    equal_time   the same, for the baseline's wall time on this machine (from the interleaved step timing)
A run whose batch and steps equal its equal-steps run's (the baseline, or a method that buys no larger batch)
is that run: it is listed, with `same_as`, and never trained twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional, Sequence

import ml_collections

from elip_jax.reduction import get_method, registered_methods

REGIMES = ("equal_steps", "equal_flops", "equal_time")
RUNS_DIR = "runs"


def baseline_method() -> str:
    """The registered method that reduces nothing (the study's reference); asked of the registry."""
    for name in registered_methods():
        if not get_method(name).reduces:
            return name
    raise ValueError("no registered reduction method reduces nothing: the study needs an unpruned baseline")


@dataclasses.dataclass(frozen=True)
class RunKey:
    index: int
    regime: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.regime}-{self.method}-s{self.seed}"


def run_keys(regimes: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> list[RunKey]:
    keys = []
    for regime in REGIMES:  # the fixed order, whatever order --regimes gives
        if regime not in regimes:
            continue
        for seed in seeds:
            for method in methods:
                keys.append(RunKey(len(keys), regime, method, seed))
    return keys


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty: give a comma-separated list, e.g. none,elip")
    unknown = [m for m in methods if m not in registered_methods()]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {unknown}: expected names from {list(registered_methods())}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods {text!r} names a method twice")
    base = baseline_method()
    if base not in methods:  # every ratio and budget is against the baseline measured in the same study
        methods = [base] + methods
    return methods


def parse_regimes(text: str) -> list[str]:
    regimes = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown or not regimes:
        raise ValueError(f"--regimes {text!r}: expected a comma-separated subset of {list(REGIMES)}")
    if "equal_steps" not in regimes:
        raise ValueError("--regimes must include equal_steps: the other regimes are measured against its baseline run")
    return regimes


def parse_selection(runs: Optional[str], shard: Optional[str], count: int) -> list[int]:
    """The run indices this process trains: --runs '0-5,9' (ranges inclusive), --shard 'i/n' (every n-th run
    from i), or all. ValueError for anything malformed or out of range."""
    if runs and shard:
        raise ValueError("give --runs or --shard, not both")
    if shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ValueError(f"--shard {shard!r}: expected i/n with 0 <= i < n, e.g. 0/2")
        i, n = int(match.group(1)), int(match.group(2))
        return list(range(i, count, n))
    if not runs:
        return list(range(count))
    chosen = set()
    for part in runs.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"--runs {runs!r}: expected indices and ranges such as 0-5,9")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first or last >= count:
            raise ValueError(f"--runs {runs!r}: {part.strip()!r} is outside the study's runs 0-{count - 1}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def run_config(base, method: str, seed: int, batch_size: Optional[int] = None, num_steps: Optional[int] = None):
    """The config one run trains: the study's config with the method and seed (and, for the large-batch regimes,
    the batch and steps; warm-up keeps its fraction of training, so a shorter run is not mostly warm-up)."""
    config = base.copy_and_resolve_references()
    with config.unlocked():
        config.reduction.method = method
        if not get_method(method).reduces:  # the baseline has no schedule: a method's stages would be rejected
            config.reduction.begin_layers = ()
            config.reduction.keep_ratios = ()
            config.reduction.keep = ()
        config.seed = int(seed)
        if batch_size is not None:
            config.batch_size = int(batch_size)
        if num_steps is not None and num_steps != base.num_steps:
            config.optim.warmup_steps = int(round(base.optim.warmup_steps * num_steps / base.num_steps))
            config.num_steps = int(num_steps)
        config.evals = ml_collections.ConfigDict(study_evals(base))
    return config


def study_evals(config) -> dict:
    """The config's evaluators (config.evals, or the zero-shot classification config.eval describes), plus
    zero-shot retrieval on the training dataset's evaluation split when none of them is a retrieval: the study
    reports classification and retrieval both ways for any config."""
    evals = {name: dict(entry) for name, entry in config.evals.items()} if config.get("evals") else {}
    e = config.eval
    if not evals:
        for i, dataset in enumerate(e.datasets):
            evals["classification" if i == 0 else f"classification_{i}"] = dict(
                type="zeroshot_classification", dataset=dataset, split=e.split,
                data_dir=e.data_dir if dataset else "", batch_size=e.batch_size, every_steps=e.every_steps,
                reduction=e.reduction)
    if not any(entry.get("type") == "zeroshot_retrieval" for entry in evals.values()):
        name = "retrieval" if "retrieval" not in evals else "study_retrieval"
        evals[name] = dict(type="zeroshot_retrieval", dataset="", split=e.split, batch_size=e.batch_size,
                           reduction=e.reduction)
    return evals


def run_dir(workdir: str, key: RunKey) -> str:
    return os.path.join(workdir, RUNS_DIR, key.name)


def read_summary(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, "summary.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished(path: str, config) -> bool:
    """Whether the run in `path` trained `config` to its end and evaluated: nothing is left to do there."""
    summary = read_summary(path)
    if not summary or not summary.get("finished") or summary.get("steps") != config.num_steps:
        return False
    return bool(summary.get("eval"))  # an evaluator that failed is reported as such, not retried forever
