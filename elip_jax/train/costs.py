"""What a token-reduction method saves per training step against the unpruned model, from XLA alone.

The training step of the config is compiled twice, once as configured and once with reduction 'none', and
XLA's cost analysis (FLOPs) and memory analysis (temporary buffers: activations and scratch) of the two
compiled programs are compared. Nothing is trained or allocated beyond compilation:
    python -m elip_jax.train --config configs/demo.py:elip --compare_costs
"""
from __future__ import annotations

import jax

from elip_jax.train import loop, sharding
from elip_jax.train.defaults import validate_config
from elip_jax.train.optim import learning_rate_schedule, make_optimizer
from elip_jax.train.step import init_state


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
    validate_config(config)
    model = loop.build_model(config)
    mesh = sharding.make_mesh(config.mesh)
    tx = make_optimizer(config.optim)
    schedule = learning_rate_schedule(config.optim, config.num_steps)
    abstract_state = jax.eval_shape(lambda p: init_state(p, tx, config.seed), loop.abstract_params(model, config))
    state_shardings = sharding.state_shardings(abstract_state, mesh, config.param_sharding)
    state_like = jax.tree_util.tree_map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                                        abstract_state, state_shardings)
    compiled = loop.compile_train_step(model, config, mesh, tx, schedule, state_shardings, state_like)
    flops, temp_bytes = loop.step_costs(compiled, config)
    c = model.config
    return {"method": model.reduction.method,
            "tokens_per_block": model.reduction.tokens_per_block() or [1 + c.num_patches] * c.vision_layers,
            "flops_per_step_per_device": flops, "temp_bytes_per_device": temp_bytes}


def compare_costs(config, report=print) -> dict:
    """Costs of the configured method and of the unpruned model, with the method's saving, reported as text."""
    method = config.reduction.method
    report(f"compiling the training step with {method} and without reduction to compare their costs ...")
    results = {"none": training_step_costs(unpruned(config))}
    if method != "none":
        results[method] = training_step_costs(config)
    for line in cost_lines(results, config.batch_size):
        report(line)
    return results


def relative(value, baseline) -> str:
    if not value or not baseline:
        return "n/a"
    return f"{100 * (value / baseline - 1):+.0f}%"


def cost_lines(results: dict, batch_size: int) -> list[str]:
    baseline = results["none"]
    lines = [f"one training step, global batch {batch_size}, per device, from XLA's analysis of the compiled step:"]
    for name, r in results.items():
        flops, temp = r["flops_per_step_per_device"], r["temp_bytes_per_device"]
        flops_text = f"{flops / 1e9:8.1f} GFLOP" if flops else "   n/a"
        temp_text = f"{temp / 2**20:7.1f} MiB temporary memory" if temp else "n/a"
        versus = "" if name == "none" else (f"   ({relative(flops, baseline['flops_per_step_per_device'])} FLOPs, "
                                            f"{relative(temp, baseline['temp_bytes_per_device'])} memory)")
        lines.append(f"  {name:<12} {flops_text}   {temp_text}{versus}")
    return lines
