"""Result records in CLIP_benchmark's JSON layout, the reduction-sweep table, and atomic writes."""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence

from elip_jax.fileio import atomic_write_text as atomic_write

CLASSIFICATION_KEYS = ("acc1", "acc5", "mean_per_class_recall")
TASKS = ("zeroshot_classification", "zeroshot_retrieval")


def describe_reduction(schedule, seed: Optional[int] = None) -> dict:
    """What the image tower does at evaluation: method, schedule and the tokens entering each block.

    The method says whether an evaluation prunes (`prunes_at_evaluation`): those that serve at inference prune
    with the image alone, `random` with per-example keys drawn from `seed` (recorded as 'seed'); text-guided
    methods get no guide at evaluation, so they do not prune (docs/elip.md): said explicitly in
    'prunes_at_eval' so that no table reads an unpruned number as a pruned one.
    """
    method = schedule.spec
    reduces = bool(schedule.active_stages() or schedule.merging_blocks())
    prunes = reduces and method.prunes_at_evaluation
    described = {"method": schedule.method, "begin_layers": list(schedule.begin_layers), "keep": list(schedule.keep),
                 "keep_ratios": [k / schedule.num_patches for k in schedule.keep] if schedule.num_patches else [],
                 "prunes_at_eval": prunes,
                 "tokens_per_block": (schedule.tokens_per_block() if prunes
                                      else [schedule.input_tokens] * schedule.depth)}
    if method.evaluation_needs_keys and seed is not None:
        described["seed"] = seed
    if schedule.r:
        described["r"] = list(schedule.r)
    if schedule.protected:
        described["protected"] = schedule.protected
    return described


def result_record(*, dataset: str, model: str, task: str, metrics: dict, pretrained: Optional[str] = None,
                  split: Optional[str] = None, reduction: Optional[dict] = None, flops_per_image=None,
                  examples_per_second=None, num_examples=None, extra: Optional[dict] = None) -> dict:
    """One evaluation, as CLIP_benchmark writes it ('dataset', 'model', 'pretrained', 'task', 'metrics',
    'language'), with ours beside 'metrics': flops_per_image, examples_per_second, reduction, split."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    record = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "language": "en",
              "metrics": metrics, "split": split, "num_examples": num_examples, "flops_per_image": flops_per_image,
              "examples_per_second": examples_per_second, "reduction": reduction}
    record.update(extra or {})
    return record


def headline_keys(task: str) -> tuple:
    if task == "zeroshot_classification":
        return CLASSIFICATION_KEYS
    return ("image_retrieval_recall@1", "image_retrieval_recall@5", "text_retrieval_recall@1",
            "text_retrieval_recall@5")


def sweep_markdown(records: Sequence[dict], title: Optional[dict] = None) -> str:
    """A markdown table: one row per schedule, its headline metrics, FLOPs per image and the ratio to row 1.

    title: what was measured ({'model': ..., 'dataset': ..., 'split': ...}), written above the table so that a
    table read on its own says what it is. A record's 'keep_ratios_typed' (the schedule as the user wrote it)
    is shown beside the ratios the schedule really keeps (whole tokens of the patch grid).
    """
    if not records:
        raise ValueError("sweep_markdown needs at least one record")
    task = records[0]["task"]
    keys = headline_keys(task)
    base = records[0].get("flops_per_image")
    header = ["method", "keep ratios (typed)", "kept / patches", "tokens per block", *keys, "GFLOPs / image",
              "FLOPs vs first row", "images / s"]
    lines = []
    if title:
        lines += ["Reduction sweep: " + ", ".join(f"{key} `{value}`" for key, value in title.items()), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        red = record["reduction"]
        exact = ", ".join(f"{r:.3g}" for r in red["keep_ratios"]) or (f"r {compact_counts(red['r'])}" if red.get("r")
                                                                      else "-")
        typed = record.get("keep_ratios_typed") or exact
        flops = record.get("flops_per_image")
        reduces = red["keep"] or any(red.get("r", ()))
        cells = [red["method"] + ("" if red["prunes_at_eval"] or not reduces else " (unpruned)"),
                 typed, exact, compact_counts(red["tokens_per_block"])]
        cells += [_percent(record["metrics"].get(k)) for k in keys]
        cells += [_number(flops / 1e9 if flops else None, 3), _number(flops / base if flops and base else None, 3),
                  _number(record.get("examples_per_second"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compact_counts(counts: Sequence[int]) -> str:
    """[197, 197, 178, 178] -> '197x2, 178x2'."""
    runs: list[list[int]] = []
    for c in counts:
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return ", ".join(f"{c}x{n}" if n > 1 else str(c) for c, n in runs)


def _percent(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_json(path: str, payload) -> None:
    atomic_write(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")

