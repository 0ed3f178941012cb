"""The study from start to end: check everything, measure the plan (once per study), train the selected runs that
are not finished, and write the report from every run finished so far (by any process).

Files in the study's workdir:
    study.json          the config the study was started with (a rerun with another config is refused)
    plan.json           measure.py's plan: costs, budget, largest batches, step times (measured once)
    runs/NAME/          one trainer workdir per run (checkpoints, metrics.jsonl, summary.json)
    results.json        every run's results, the per-method mean and std over seeds, rankings, targets
    results.md          the tables
    accuracy_vs_flops.png, loss_curves.png
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional

from elip_jax.fileio import atomic_write_json, atomic_write_text
from elip_jax.train.resume import flatten
from elip_jax.study import aggregate, plots
from elip_jax.study.measure import large_batch_runs, measure_plan
from elip_jax.study.runs import (RunKey, baseline_method, finished, read_summary, run_config, run_dir,
                                 run_keys)

STUDY_FILE, PLAN_FILE = "study.json", "plan.json"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
ACCURACY_PNG, LOSS_PNG = "accuracy_vs_flops.png", "loss_curves.png"
EXIT_STOPPED = 3  # a run was preempted: rerun the same command to continue


@dataclasses.dataclass
class Study:
    config: object  # the study's base config (ml_collections)
    config_name: str  # as given on the command line, for the report
    methods: list
    seeds: list
    regimes: list
    workdir: str
    repeats: int = 5
    batch_multiple: int = 8
    max_batch_factor: float = 4.0
    plan_wait_s: float = 3600.0
    makes_plan: bool = True  # False: another process (shard 0) measures the plan; this one waits for it

    @property
    def keys(self) -> list[RunKey]:
        return run_keys(self.regimes, self.methods, self.seeds)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def check_study_record(study: Study) -> None:
    """Writes study.json on a new study; ValueError naming the keys when the workdir holds another config's."""
    path = os.path.join(study.workdir, STUDY_FILE)
    config = json.loads(json.dumps(study.config.to_dict(), default=float))
    recorded = read_json(path)
    if recorded is None:
        atomic_write_json(path, {"config_name": study.config_name, "config": config})
        return
    before, now = flatten(recorded["config"]), flatten(config)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} (was {before.get(k)!r}, now {now.get(k)!r})" for k in changed[:4])
        raise ValueError(f"--workdir {study.workdir!r} holds a study of another config: {shown}"
                         f"{' ...' if len(changed) > 4 else ''}; use a new --workdir or the same config")


def ensure_plan(study: Study, report: Callable) -> dict:
    """The study's plan from plan.json, measured (or extended by methods it lacks) by the process that makes it;
    the others wait for it."""
    path = os.path.join(study.workdir, PLAN_FILE)
    large = any(r != "equal_steps" for r in study.regimes)

    def missing(plan):
        if plan is None:
            return list(study.methods)
        return [m for m in study.methods
                if m not in plan["methods"] or (large and "largest_batch" not in plan["methods"][m])]

    plan = read_json(path)
    if not missing(plan):
        return plan
    if not study.makes_plan:
        report(f"waiting for the plan ({path}), measured by the process with --shard 0/N ...")
        deadline = time.monotonic() + study.plan_wait_s
        while missing(plan):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete plan in {path} after {study.plan_wait_s:.0f} s: start the "
                                   "process with --shard 0/N (or one without --runs/--shard) to measure it")
            time.sleep(10)
            plan = read_json(path)
        return plan
    todo = missing(plan)
    baseline = baseline_method()
    measured = measure_plan(study.config, [baseline] + [m for m in todo if m != baseline], repeats=study.repeats,
                            multiple=study.batch_multiple, max_batch_factor=study.max_batch_factor,
                            regimes=study.regimes, report=report)
    if plan is None:
        plan = measured
    else:  # new methods: their step times scaled so that their ratio is to the baseline timed beside them
        scale = plan["methods"][baseline]["step_s"] / measured["methods"][baseline]["step_s"]
        for method in todo:
            entry = measured["methods"][method]
            for key in ("step_s", "large_batch_step_s"):
                if key in entry:
                    entry[key] *= scale
            if method != baseline or baseline not in plan["methods"]:
                plan["methods"][method] = entry
            elif "largest_batch" in entry:
                plan["methods"][baseline]["largest_batch"] = entry["largest_batch"]
                plan["methods"][baseline]["large_batch_step_s"] = entry["large_batch_step_s"]
        plan["budget_bytes_per_device"] = plan.get("budget_bytes_per_device") or measured["budget_bytes_per_device"]
    atomic_write_json(path, plan)
    return plan


def run_spec(study: Study, key: RunKey, plan: Optional[dict]):
    """(config to train or None, name of the run it is the same as or None, why it cannot run or None)."""
    base = study.config
    if key.regime == "equal_steps":
        return run_config(base, key.method, key.seed), None, None
    large = large_batch_runs(plan, key.method) if plan else None
    if large is None:
        return None, None, "no largest batch measured (or no batch fits the budget)"
    batch, steps = large["batch"], large[f"{key.regime}_steps"]
    if batch == base.batch_size and steps == base.num_steps:
        return None, f"equal_steps-{key.method}-s{key.seed}", None
    return run_config(base, key.method, key.seed, batch_size=batch, num_steps=steps), None, None


def train_runs(study: Study, selection: list, plan: dict, report: Callable, train=None) -> int:
    """Trains the selected runs that are not finished, in index order; returns EXIT_STOPPED if one was stopped
    early (preempted), else 0. train: the trainer's `train(config, workdir)` (a test may wrap it)."""
    if train is None:
        from elip_jax.train.loop import train
    keys = study.keys
    for index in selection:
        key = keys[index]
        config, same_as, why_not = run_spec(study, key, plan)
        path = run_dir(study.workdir, key)
        if why_not:
            report(f"run {index} {key.name}: skipped, {why_not}")
            continue
        if same_as:
            report(f"run {index} {key.name}: the same run as {same_as} (same batch and steps)")
            continue
        if finished(path, config):
            report(f"run {index} {key.name}: finished already")
            continue
        report(f"run {index} {key.name}: training {key.method}, seed {key.seed}, batch {config.batch_size}, "
               f"{config.num_steps} steps in {path}")
        summary = train(config, path)
        if not summary.get("finished"):
            report(f"run {index} {key.name}: stopped at step {summary.get('steps')}; rerun to continue")
            return EXIT_STOPPED
    return 0


def collect(study: Study, plan: Optional[dict]) -> list[dict]:
    """Every run of the study with its result when finished (aliases take their run's)."""
    runs, by_name = [], {}
    for key in study.keys:
        config, same_as, why_not = run_spec(study, key, plan)
        entry = {"index": key.index, "name": key.name, "regime": key.regime, "method": key.method,
                 "seed": key.seed, "same_as": same_as, "not_run": why_not, "result": None}
        if config is not None:
            path = run_dir(study.workdir, key)
            summary = read_summary(path)
            entry.update(batch_size=config.batch_size, num_steps=config.num_steps)
            if finished(path, config):
                entry["result"] = aggregate.run_result(path, summary, {k: dict(v) for k, v in config.evals.items()})
        by_name[key.name] = entry
        runs.append(entry)
    for entry in runs:
        if entry["same_as"] and entry["same_as"] in by_name:
            entry["result"] = by_name[entry["same_as"]]["result"]
    return runs


def write_report(study: Study, plan: Optional[dict], report: Callable = print) -> dict:
    runs = collect(study, plan)
    groups = aggregate.group(runs)
    baseline = baseline_method()
    document = {
        "study": {"config": study.config_name, "model": study.config.model.name,
                  "dataset": study.config.data.name, "methods": study.methods, "seeds": study.seeds,
                  "regimes": study.regimes},
        "baseline": baseline, "plan": plan,
        # runs to train: an alias of an equal-steps run (same batch and steps) is no run of its own
        "finished_runs": sum(1 for r in runs if r["result"] is not None and not r["same_as"]),
        "total_runs": sum(1 for r in runs if not r["same_as"] and not r["not_run"]),
        "groups": groups,
        "rankings": {regime: aggregate.ranking(entries) for regime, entries in groups.items()},
        "targets": aggregate.targets(groups, plan, baseline),
        "runs": runs,
    }
    atomic_write_json(os.path.join(study.workdir, RESULTS_JSON), document)
    atomic_write_text(os.path.join(study.workdir, RESULTS_MD), aggregate.markdown(document))
    title = f"{study.config_name}: {study.config.model.name}"
    drawn = [plots.accuracy_vs_flops(groups, study.methods, os.path.join(study.workdir, ACCURACY_PNG),
                                     f"{title}, zero-shot top-1 against training FLOPs"),
             plots.loss_curves(runs, study.methods, os.path.join(study.workdir, LOSS_PNG),
                               f"{title}, training loss")]
    report(f"study report: {document['finished_runs']} of {document['total_runs']} runs finished; "
           f"{os.path.join(study.workdir, RESULTS_MD)}, {RESULTS_JSON}"
           + (f", {ACCURACY_PNG}" if drawn[0] else "") + (f", {LOSS_PNG}" if drawn[1] else ""))
    return document


def run_study(study: Study, selection: list, report: Callable = print, report_only: bool = False,
              train=None) -> int:
    os.makedirs(study.workdir, exist_ok=True)
    check_study_record(study)
    if report_only:
        write_report(study, read_json(os.path.join(study.workdir, PLAN_FILE)), report)
        return 0
    plan = ensure_plan(study, report)
    code = train_runs(study, selection, plan, report, train)
    write_report(study, plan, report)
    return code
