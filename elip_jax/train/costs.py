"""What a token-reduction method saves per training step against the unpruned model, from XLA alone.

The training step of the config is compiled twice, once as configured and once with reduction 'none', and
XLA's cost analysis (FLOPs) and memory analysis (temporary buffers: activations and scratch) of the two
compiled programs are compared. Nothing is trained or allocated beyond compilation:
    python -m elip_jax.train --config configs/demo.py:elip --compare_costs
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax

from elip_jax.train import setup
from elip_jax.train.defaults import validate_config


def unpruned(config):
    baseline = config.copy_and_resolve_references()
    with baseline.unlocked():
        baseline.reduction.method = "none"
        baseline.reduction.begin_layers = ()
        baseline.reduction.keep_ratios = ()
    return baseline


def training_step_costs(config) -> dict:
    """{'method', 'tokens_per_block', 'flops_per_step_per_device', 'temp_bytes_per_device'} of the compiled
    training step of `config` (abstract state and batch: nothing is initialised or run)."""
    p = setup.plan(config)
    compiled = setup.compile_train_step(p, setup.abstract_state_with_shardings(p))
    flops, temp_bytes = setup.step_costs(compiled, config)
    model = p.model
    c = model.config
    return {"method": model.reduction.method,
            "tokens_per_block": model.reduction.tokens_per_block() or [1 + c.num_patches] * c.vision_layers,
            "flops_per_step_per_device": flops, "temp_bytes_per_device": temp_bytes}


def costs_from_workdir(config, workdir) -> Optional[dict]:
    """The configured method's costs as the trainer measured them in `workdir` (summary.json), when that run
    compiled this same step (model, batch, accumulation, tokens per block); else None."""
    path = os.path.join(workdir, "summary.json") if workdir else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    model = setup.build_model(config)
    c = model.config
    tokens = model.reduction.tokens_per_block() or [1 + c.num_patches] * c.vision_layers
    same = (summary.get("model") == config.model.name and summary.get("reduction") == model.reduction.method
            and summary.get("global_batch_size") == config.batch_size and summary.get("tokens_per_block") == tokens
            and summary.get("grad_accum_steps", 1) == config.optim.grad_accum_steps
            and summary.get("devices") == jax.device_count() and summary.get("temp_bytes_per_device"))
    if not same:
        return None
    return {"method": model.reduction.method, "tokens_per_block": tokens,
            "flops_per_step_per_device": summary["flops_per_step_per_device"],
            "temp_bytes_per_device": summary["temp_bytes_per_device"]}


def compare_costs(config, workdir: Optional[str] = None, report=print) -> dict:
    """Costs of the configured method and of the unpruned model, with the method's saving, reported as text.

    workdir: a run of this config whose summary.json already holds the method's costs (saves one compilation).
    """
    validate_config(config)
    method = config.reduction.method
    trained = costs_from_workdir(config, workdir) if method != "none" else None
    compiling = "the unpruned model's training step" if trained else (
        f"the training step with {method} and without reduction" if method != "none" else "the training step")
    report(f"compiling {compiling} to read XLA's FLOP and memory counts (nothing is run) ...")
    results = {"none": training_step_costs(unpruned(config))}
    if method != "none":
        results[method] = trained or training_step_costs(config)
    for line in cost_lines(results, config.batch_size):
        report(line)
    return results


def saving(value, baseline, noun: str) -> str:
    if not value or not baseline:
        return f"{noun}: n/a"
    change = 1 - value / baseline
    return f"{abs(change):.0%} {'fewer' if noun == 'FLOPs' else 'less'} {noun}" if change >= 0 else \
        f"{-change:.0%} more {noun}"


def cost_lines(results: dict, batch_size: int) -> list[str]:
    baseline = results["none"]
    methods = [m for m in results if m != "none"]
    title = f"what {methods[0]} saves" if methods else "what the unpruned model costs"
    lines = [f"{title} per training step (global batch {batch_size}), per device, from XLA's analysis of the "
             "compiled step:"]
    for name, r in results.items():
        flops, temp = r["flops_per_step_per_device"], r["temp_bytes_per_device"]
        flops_text = f"{flops / 1e9:8.3g} GFLOP" if flops else "     n/a"
        temp_text = f"{temp / 2**20:7.3g} MiB temporary memory" if temp else "temporary memory n/a"
        versus = "" if name == "none" else (f": {saving(flops, baseline['flops_per_step_per_device'], 'FLOPs')}, "
                                            f"{saving(temp, baseline['temp_bytes_per_device'], 'memory')}")
        label = "unpruned" if name == "none" else name
        lines.append(f"  {label:<12} {flops_text}   {temp_text}{versus}")
    return lines
