"""Per-run results read back from the runs' workdirs, their mean and standard deviation over seeds, and the
study's JSON and markdown.

Standard deviations are the sample ones (ddof=1) over the seeds that finished; with one seed there is none, and
the tables say so instead of showing 0. Accuracy is the first zero-shot classification evaluator's top-1,
retrieval the first zero-shot retrieval evaluator's recall@1 both ways (image->text: a caption of the image
ranked first; text->image: the caption's image ranked first).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from typing import Optional, Sequence

METRICS = ("acc1", "i2t_r1", "t2i_r1", "final_loss")
LABELS = {"acc1": "zero-shot top-1", "i2t_r1": "image->text R@1", "t2i_r1": "text->image R@1",
          "final_loss": "final loss"}


def mean_std(values: Sequence[float]) -> dict:
    """{'mean', 'std' (sample, ddof=1; None under two values), 'n'} of the values that are not None."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def eval_metrics(summary: dict, evals: dict) -> dict:
    """acc1, i2t_r1, t2i_r1 from a run's summary, by the evaluators' types (config.evals of the run)."""
    out = {"acc1": None, "i2t_r1": None, "t2i_r1": None}
    results = summary.get("eval") or {}
    for name, settings in evals.items():
        metrics = results.get(name) or {}
        if "error" in metrics:
            continue
        if settings.get("type") == "zeroshot_classification" and out["acc1"] is None:
            out["acc1"] = metrics.get("acc1")
        if settings.get("type") == "zeroshot_retrieval" and out["i2t_r1"] is None:
            out["i2t_r1"] = metrics.get("text_retrieval_recall@1")
            out["t2i_r1"] = metrics.get("image_retrieval_recall@1")
    return out


def read_history(path: str) -> list[dict]:
    """The run's metrics.jsonl records (a line cut short by a kill is skipped)."""
    records = []
    try:
        with open(os.path.join(path, "metrics.jsonl")) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except OSError:
        pass
    return records


def run_result(path: str, summary: dict, evals: dict) -> dict:
    history = read_history(path)
    step_times = [r["perf/step_s"] for r in history if r.get("perf/step_s")]
    curve = [[r["step"], r["train/loss"]] for r in history if "train/loss" in r]
    final_loss = (summary.get("final") or {}).get("train/loss")
    if final_loss is None and curve and curve[-1][0] == summary.get("steps"):
        final_loss = curve[-1][1]  # a summary written again after the run ended lost it; the log has it
    return {**eval_metrics(summary, evals), "final_loss": final_loss,
            "steps": summary.get("steps"), "batch_size": summary.get("global_batch_size"),
            "flops_per_step_per_device": summary.get("flops_per_step_per_device"),
            "temp_bytes_per_device": summary.get("temp_bytes_per_device"),
            "devices": summary.get("devices"),
            "training_flops": (summary["flops_per_step_per_device"] * summary["devices"] * summary["steps"]
                               if summary.get("flops_per_step_per_device") and summary.get("devices") else None),
            "median_logged_step_s": statistics.median(step_times) if step_times else None,
            "eval_errors": {k: v["error"] for k, v in (summary.get("eval") or {}).items() if "error" in v},
            "loss_curve": curve}


def group(runs: list[dict]) -> dict:
    """{regime: {method: {metric: mean_std, 'seeds': [...], 'batch_size', 'steps', 'training_flops'}}} over the
    finished runs."""
    groups: dict = {}
    for run in runs:
        if run.get("result") is None:
            continue
        groups.setdefault(run["regime"], {}).setdefault(run["method"], []).append(run)
    out = {}
    for regime, methods in groups.items():
        out[regime] = {}
        for method, members in methods.items():
            results = [m["result"] for m in members]
            entry = {metric: mean_std([r[metric] for r in results]) for metric in METRICS}
            entry["training_flops"] = mean_std([r["training_flops"] for r in results])
            entry["seeds"] = sorted(m["seed"] for m in members)
            entry["alias"] = all(m.get("same_as") for m in members)  # the equal-steps runs themselves
            entry["batch_size"] = results[0]["batch_size"]
            entry["steps"] = results[0]["steps"]
            out[regime][method] = entry
    return out


def ranking(entries: dict, metric: str = "acc1") -> list[dict]:
    """Methods by mean `metric`, best first, each with the gap to the next and that gap's standard error
    (sqrt(s1^2/n1 + s2^2/n2)); 'separated' when the gap exceeds two standard errors, None when a std is missing."""
    ordered = sorted((m for m in entries if entries[m][metric]["mean"] is not None),
                     key=lambda m: -entries[m][metric]["mean"])
    rows = []
    for i, method in enumerate(ordered):
        row = {"method": method, "mean": entries[method][metric]["mean"], "std": entries[method][metric]["std"]}
        if i + 1 < len(ordered):
            a, b = entries[method][metric], entries[ordered[i + 1]][metric]
            row["gap_to_next"] = a["mean"] - b["mean"]
            if a["std"] is not None and b["std"] is not None:
                row["gap_standard_error"] = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
                row["separated"] = row["gap_to_next"] > 2 * row["gap_standard_error"]
            else:
                row["gap_standard_error"], row["separated"] = None, None
        rows.append(row)
    return rows


def targets(groups: dict, plan: Optional[dict], baseline: str) -> dict:
    """The issue's targets for every method against the baseline: top-1 within 1 point at equal steps, largest
    batch at equal memory at least 1.4x the baseline's."""
    out = {}
    steps = groups.get("equal_steps", {})
    base = steps.get(baseline, {}).get("acc1", {})
    for method in steps:
        if method == baseline:
            continue
        acc = steps[method]["acc1"]
        target = {}
        if acc["mean"] is not None and base.get("mean") is not None:
            gap = 100 * (acc["mean"] - base["mean"])
            target["equal_steps_gap_points"] = gap
            target["equal_steps_within_1_point"] = gap >= -1.0
        found = ((plan or {}).get("methods", {}).get(method, {}).get("largest_batch") or {})
        if found and plan:
            ratio = found["no_remat"]["batch"] / plan["batch_size"]
            target["equal_memory_batch_ratio"] = ratio
            target["equal_memory_at_least_1_4x"] = ratio >= 1.4
        out[method] = target
    return out


def percent(stat: dict, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = f"{100 * stat['mean']:.{digits}f}"
    return text + (f" ± {100 * stat['std']:.{digits}f}" if stat["std"] is not None else " (1 seed)")


def plain(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")


def ratio(value, reference, digits: int = 2) -> str:
    return f"{value / reference:.{digits}f}" if value and reference else "n/a"


def tokens_text(tokens: Sequence[int]) -> str:
    """65x2 59x2 43x6 27x2: runs of equal token counts."""
    parts, i = [], 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        parts.append(f"{tokens[i]}x{j - i}" if j - i > 1 else str(tokens[i]))
        i = j
    return " ".join(parts)


def markdown(report: dict) -> str:
    """The study's tables: equal steps, the batch the memory buys, equal FLOPs, equal time; targets; ranking."""
    plan, groups, baseline = report.get("plan") or {}, report["groups"], report["baseline"]
    settings = report["study"]
    entries = plan.get("methods", {})
    base_entry = entries.get(baseline, {})
    lines = [f"Study of {', '.join(settings['methods'])} on `{settings['config']}` ({settings['model']}, "
             f"{settings['dataset']}): seeds {settings['seeds']}; {plan.get('devices', '?')} device(s) "
             f"({plan.get('device_kind', '?')}). Mean ± sample standard deviation over the seeds that finished; "
             f"runs finished: {report['finished_runs']} of {report['total_runs']} (a large-batch run with the batch and "
             "steps of its equal-steps run is that run, not counted twice).", ""]
    steps = groups.get("equal_steps", {})
    lines += [f"**Equal steps** (batch {plan.get('batch_size', '?')}, {plan.get('num_steps', '?')} steps). "
              "FLOPs and temporary memory per device from XLA's analysis of the compiled training step; step "
              f"time: median of {plan.get('timing_repeats', '?')} interleaved rounds; ratios against `{baseline}`.",
              "", "| method | tokens per block | seeds | zero-shot top-1 % | image->text R@1 % | text->image R@1 % | "
              "final loss | GFLOP/step (ratio) | temp MiB (ratio) | step time ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for method in settings["methods"]:
        e, g = entries.get(method, {}), steps.get(method)
        flops, temp = e.get("flops_per_step_per_device"), e.get("memory_per_device", {}).get("temp")
        base_flops = base_entry.get("flops_per_step_per_device")
        base_temp = base_entry.get("memory_per_device", {}).get("temp")
        cells = [f"`{method}`", tokens_text(e.get("tokens_per_block", [])) or "?",
                 str(len(g["seeds"])) if g else "0"]
        cells += [percent(g[m]) if g else "n/a" for m in ("acc1", "i2t_r1", "t2i_r1")]
        cells += [plain(g["final_loss"]) if g else "n/a",
                  f"{flops / 1e9:.2f} ({ratio(flops, base_flops)})" if flops else "n/a",
                  f"{temp / 2**20:.0f} ({ratio(temp, base_temp)})" if temp else "n/a",
                  ratio(e.get("step_s"), base_entry.get("step_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    if any("largest_batch" in e for e in entries.values()):
        budget = plan["budget_bytes_per_device"]
        lines += ["", f"**The batch the memory buys**: the largest batch (multiples of {plan['batch_multiple']}, up "
                  f"to {plan['batch_limit']}) whose compiled training step fits in {budget / 2**20:.1f} MiB per "
                  f"device, the footprint (state, batch and temporaries, from XLA's memory analysis) of "
                  f"`{baseline}` at batch {plan['batch_size']}.", "",
                  "| method | memory at batch %d, MiB (ratio) | largest batch | ratio | with remat | ratio |"
                  % plan["batch_size"], "|---|---|---|---|---|---|"]
        for method in settings["methods"]:
            e = entries.get(method, {})
            found = e.get("largest_batch")
            if not found:
                continue
            total = e["memory_per_device"]["total"]
            b, r = found["no_remat"]["batch"], found["remat"]["batch"]
            lines.append(f"| `{method}` | {total / 2**20:.1f} ({total / budget:.2f}) | {b} | "
                         f"{b / plan['batch_size']:.2f} | {r} | {r / plan['batch_size']:.2f} |")
    for regime, title in (("equal_flops", "Equal training FLOPs"), ("equal_time", "Equal wall time")):
        if regime not in settings["regimes"]:
            continue
        what = ("the training FLOPs of `%s`'s equal-steps run" % baseline if regime == "equal_flops" else
                "the wall time of `%s`'s equal-steps run on this machine (from the interleaved step times)" % baseline)
        lines += ["", f"**{title}**: each method at its largest batch (no remat), for {what}.", "",
                  "| method | batch | steps | training TFLOP | zero-shot top-1 % | image->text R@1 % | "
                  "text->image R@1 % | final loss | seeds |", "|---|---|---|---|---|---|---|---|---|"]
        for method in settings["methods"]:
            g = groups.get(regime, {}).get(method)
            if not g:
                planned = next((r for r in report["runs"] if r["regime"] == regime and r["method"] == method), {})
                lines.append(f"| `{method}` | {planned.get('batch_size', '')} | {planned.get('num_steps', '')} | | "
                             f"{planned.get('not_run') or 'not finished yet'} | | | | 0 |")
                continue
            pflop = g["training_flops"]["mean"]
            name = f"`{method}`" + (" (its equal-steps runs)" if g["alias"] else "")
            cells = [name, str(g["batch_size"]), str(g["steps"]), f"{pflop / 1e12:.4g}" if pflop else "n/a",
                     percent(g["acc1"]), percent(g["i2t_r1"]), percent(g["t2i_r1"]), plain(g["final_loss"]),
                     str(len(g["seeds"]))]
            lines.append("| " + " | ".join(cells) + " |")
        rows = report["rankings"].get(regime, [])
        if rows:
            lines += ["", "Ranking by zero-shot top-1: " + "; ".join(rank_text(row) for row in rows) + "."]
    rows = report["rankings"].get("equal_steps", [])
    if rows:
        lines += ["", "Ranking at equal steps by zero-shot top-1: " + "; ".join(rank_text(r) for r in rows) + "."]
    if report["targets"]:
        lines += ["", "Targets against `%s`:" % baseline]
        for method, t in report["targets"].items():
            parts = []
            if "equal_steps_gap_points" in t:
                parts.append(f"top-1 at equal steps {t['equal_steps_gap_points']:+.1f} points "
                             f"({'meets' if t['equal_steps_within_1_point'] else 'misses'}: at most 1 point below)")
            if "equal_memory_batch_ratio" in t:
                parts.append(f"largest batch at equal memory {t['equal_memory_batch_ratio']:.2f}x "
                             f"({'meets' if t['equal_memory_at_least_1_4x'] else 'misses'} 1.4x)")
            lines.append(f"- `{method}`: " + ("; ".join(parts) or "no finished runs yet"))
    return "\n".join(lines) + "\n"


def rank_text(row: dict) -> str:
    text = f"`{row['method']}` {100 * row['mean']:.1f}"
    if "gap_to_next" in row:
        if row.get("separated") is None:
            text += f" (ahead by {100 * row['gap_to_next']:.1f}, uncertainty unknown: one seed)"
        else:
            text += (f" (ahead by {100 * row['gap_to_next']:.1f} ± {100 * row['gap_standard_error']:.1f}: "
                     f"{'separated' if row['separated'] else 'within the noise'})")
    return text
