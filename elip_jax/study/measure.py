"""The study's plan, measured once before any run: every method's training step compiled at the config's batch
(XLA FLOPs and memory), the memory budget (what the baseline's step needs at that batch), each method's largest
batch within it with and without remat (compile only), and the step times of all of them, interleaved.

Memory is the compiled step's footprint from XLA's memory analysis: arguments (the train state and the batch)
plus outputs not aliased to them plus temporaries. Times are the median of `repeats` rounds in which every
program runs once in turn, so a change in the machine's load hits every method alike; only their ratios to the
baseline are claims.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from elip_jax.study.budget import largest_batch
from elip_jax.study.runs import baseline_method, run_config
from elip_jax.train import setup, sharding
from elip_jax.train.step import init_state


def memory_bytes(compiled) -> dict:
    stats = compiled.memory_analysis()
    fields = {k: int(getattr(stats, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp")}
    fields["total"] = fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
    return fields


def compiled_costs(config, state_like=None):
    """(compiled step, plan, costs) of config's training step; state_like None: abstract (compile only)."""
    p = setup.plan(config)
    compiled = setup.compile_train_step(p, state_like if state_like is not None
                                        else setup.abstract_state_with_shardings(p))
    return compiled, p, step_record(compiled, p)


def step_record(compiled, p) -> dict:
    flops, _ = setup.step_costs(compiled, p.config)
    c = p.model.config
    return {"tokens_per_block": p.model.reduction.tokens_per_block() or [1 + c.num_patches] * c.vision_layers,
            "flops_per_step_per_device": flops, "memory_per_device": memory_bytes(compiled)}


def with_remat(config, remat: bool):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.remat = remat
    return config


def batch_multiple(config, requested: int) -> int:
    """Batches the search may try: multiples of `requested`, of the devices and of the accumulation steps."""
    step = int(np.lcm(jax.device_count() * config.optim.grad_accum_steps, max(1, requested)))
    return step


def search_batches(config, budget: int, multiple: int, limit: int, report: Callable,
                   measured: Optional[dict] = None) -> dict:
    """{'no_remat'|'remat': {'batch', 'probes': {batch: bytes}, 'flops_per_step_per_device' at that batch}}.
    measured: config's own step record (its batch, the config's remat), not compiled again."""
    found = {}
    for label, remat in (("no_remat", False), ("remat", True)):
        flops, known = {}, {}
        if measured is not None and bool(config.model.remat) == remat:
            known[config.batch_size] = measured["memory_per_device"]["total"]
            flops[config.batch_size] = measured["flops_per_step_per_device"]

        def memory(batch, remat=remat, flops=flops):
            trial = run_config(with_remat(config, remat), config.reduction.method, config.seed, batch_size=batch)
            _, _, costs = compiled_costs(trial)
            flops[batch] = costs["flops_per_step_per_device"]
            report(f"  {config.reduction.method} {label} batch {batch}: "
                   f"{costs['memory_per_device']['total'] / 2**20:.1f} MiB (budget {budget / 2**20:.1f} MiB)")
            return costs["memory_per_device"]["total"]

        start = min(limit, max(multiple, config.batch_size // multiple * multiple))
        batch, probes = largest_batch(memory, budget, start=start, multiple=multiple, limit=limit, known=known)
        found[label] = {"batch": batch, "probes": {str(b): m for b, m in sorted(probes.items())},
                        "flops_per_step_per_device": flops.get(batch)}
    return found


def synthetic_batch(p, batch_size: int, seed: int = 0) -> dict:
    """Random images and captions shaped like the trainer's batches (SOT, words, EOT, padding), on its devices."""
    c = p.model.config
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, c.image_size, c.image_size, 3), dtype=np.uint8)
    tokens = np.zeros((batch_size, c.context_length), np.int32)
    length = min(c.context_length, 12)
    tokens[:, 0] = c.vocab_size - 2  # CLIP's start-of-text id is the vocabulary's second to last
    tokens[:, 1:length - 1] = rng.integers(1, c.vocab_size - 2, (batch_size, length - 2))
    tokens[:, length - 1] = c.vocab_size - 1  # end-of-text: the largest id, where the text tower reads
    where = sharding.batch_sharding(p.mesh)
    return {"images": jax.device_put(images, where), "tokens": jax.device_put(tokens, where)}


class TimedProgram:
    """One method's training step at one batch, compiled on a real (randomly initialised) state."""

    def __init__(self, config):
        p = setup.plan(config)
        c = p.model.config
        init = lambda key: p.model.init(key, jnp.zeros((1, c.image_size, c.image_size, 3)),
                                        jnp.zeros((1, c.context_length), jnp.int32))["params"]
        params = jax.jit(init, out_shardings=p.state_shardings.params)(jax.random.PRNGKey(config.seed))
        self.state = jax.jit(lambda x: init_state(x, p.tx, config.seed), out_shardings=p.state_shardings)(params)
        self.compiled = setup.compile_train_step(p, self.state)
        self.costs = step_record(self.compiled, p)
        self.batch = synthetic_batch(p, config.batch_size)

    def run(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def interleaved_times(programs: dict, repeats: int) -> dict:
    """{name: median seconds of one step} over `repeats` rounds of every program once (after one warm-up)."""
    for program in programs.values():
        program.run()  # warm-up: first-call costs are not step time
    times = {name: [] for name in programs}
    for _ in range(repeats):
        for name, program in programs.items():
            times[name].append(program.run())
    return {name: statistics.median(values) for name, values in times.items()}


def measure_plan(base, methods, *, repeats: int, multiple: int, max_batch_factor: float, regimes,
                 report: Callable = print) -> dict:
    """The plan of a study (see the module's doc); the search and large-batch timing only when a large-batch
    regime is asked for. Each method's step at the config's batch is compiled once, on a real state: its XLA
    counts and its timing come from the same program."""
    baseline = baseline_method()
    configs = {m: run_config(base, m, base.seed) for m in methods}
    report(f"compiling the training step of {', '.join(methods)} at batch {base.batch_size} (XLA's counts, "
           "then timing) ...")
    programs = {f"{m}@{base.batch_size}": TimedProgram(configs[m]) for m in methods}
    entries = {m: dict(programs[f"{m}@{base.batch_size}"].costs) for m in methods}
    budget = entries[baseline]["memory_per_device"]["total"]
    multiple = batch_multiple(base, multiple)
    limit = max(multiple, int(base.batch_size * max_batch_factor) // multiple * multiple)
    large = any(r != "equal_steps" for r in regimes)
    if large:
        report(f"searching each method's largest batch within {budget / 2**20:.1f} MiB per device (the memory "
               f"{baseline} needs at batch {base.batch_size}), multiples of {multiple} up to {limit}, compile only ...")
        for method in methods:
            entries[method]["largest_batch"] = search_batches(configs[method], budget, multiple, limit, report,
                                                              measured=entries[method])
            batch = entries[method]["largest_batch"]["no_remat"]["batch"]
            if batch and batch != base.batch_size:
                report(f"  compiling {method} at batch {batch} for timing ...")
                programs[f"{method}@{batch}"] = TimedProgram(run_config(base, method, base.seed, batch_size=batch))
    report(f"timing {len(programs)} training steps interleaved, {repeats} rounds ...")
    times = interleaved_times(programs, repeats)
    del programs
    for method in methods:
        entries[method]["step_s"] = times[f"{method}@{base.batch_size}"]
        if large:
            batch = entries[method]["largest_batch"]["no_remat"]["batch"]
            entries[method]["large_batch_step_s"] = times.get(f"{method}@{batch}", entries[method]["step_s"])
    return {"baseline": baseline, "batch_size": base.batch_size, "num_steps": base.num_steps,
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "budget_bytes_per_device": budget, "batch_multiple": multiple, "batch_limit": limit,
            "timing_repeats": repeats, "methods": entries}


def large_batch_runs(plan: dict, method: str) -> Optional[dict]:
    """{'batch', 'equal_flops_steps', 'equal_time_steps'} of a method in the large-batch regimes; None when it was
    not searched or nothing fits."""
    entry, base = plan["methods"].get(method, {}), plan["methods"][plan["baseline"]]
    found = entry.get("largest_batch", {}).get("no_remat", {})
    if not found.get("batch") or not found.get("flops_per_step_per_device"):
        return None
    baseline_flops = base["flops_per_step_per_device"] * plan["num_steps"]
    baseline_time = base["step_s"] * plan["num_steps"]
    return {"batch": found["batch"],
            "equal_flops_steps": max(1, round(baseline_flops / found["flops_per_step_per_device"])),
            "equal_time_steps": max(1, round(baseline_time / entry["large_batch_step_s"]))}
