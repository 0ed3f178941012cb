"""The training loop: steps a `TrainContext` (setup.py) to config.num_steps; every decision was made in set-up.

    train(config, workdir)  setup, then steps with logging, checkpoints, evaluators and preemption, then the summary
"""
from __future__ import annotations

import gc
import os
import time
from typing import Optional

import jax
from jax.experimental import multihost_utils

from elip_jax.fileio import atomic_write_json
from elip_jax.train import checkpointing, metrics as metrics_lib
from elip_jax.train.setup import TrainContext, previous_summary, setup

__all__ = ["NonFiniteLossError", "train"]


class NonFiniteLossError(RuntimeError):
    pass


def train(config, workdir: str, *, stop_after_steps: Optional[int] = None, objective=None) -> dict:
    """Trains until config.num_steps (resuming from workdir's newest restorable checkpoint), returns the summary.

    Everything a user can get wrong is checked by `setup` before anything compiles or is written.
    stop_after_steps: stop early after this many steps of this call (tests of interrupted runs).
    objective: what is trained (train/objectives.py); default contrastive pre-training on image-text pairs.
    """
    ctx = setup(config, workdir, objective)
    writer = metrics_lib.MetricsWriter(workdir, config.num_steps, ctx.start_step)
    writer.message(f"elip_jax: {config.model.name} reduction={ctx.model.reduction.method} tokens per block "
                   f"{ctx.model.reduction.tokens_per_block() or 'unpruned'}; {jax.process_count()} process(es), "
                   f"{jax.device_count()} device(s) ({jax.devices()[0].device_kind}); "
                   f"starting at step {ctx.start_step} of {config.num_steps}")
    # one process: our SIGTERM handler; many: jax's own preemption notifier keeps the signal (see preempted)
    preemption = checkpointing.PreemptionFlag()
    if jax.process_count() == 1:
        preemption.install()
    run = Run(ctx, writer, preemption)
    try:
        run.steps(stop_after_steps)
        if run.finished:
            ctx.checkpointer.save(run.step, ctx.state, ctx.train_iter.get_state(), force=True)
            run.evaluate()
        saved = ctx.checkpointer.wait()
    finally:
        preemption.uninstall()
        writer.close()
        run.batch = None  # (after an exception) so that grain unlinks its shared memory before the workers stop
        gc.collect()
        ctx.train_iter.close()
    return write_summary(ctx, run, saved)


class Run:
    """The mutable part of a run: the step reached, the last logged metrics and evaluation results."""

    def __init__(self, ctx: TrainContext, writer, preemption):
        self.ctx, self.writer, self.preemption = ctx, writer, preemption
        self.step, self.batch = ctx.start_step, None
        self.last_metrics, self.eval_results, self.timing = {}, {}, StepTimer()

    @property
    def finished(self) -> bool:
        return self.step >= self.ctx.config.num_steps

    def steps(self, stop_after_steps: Optional[int]) -> None:
        ctx, config = self.ctx, self.ctx.config
        while self.step < config.num_steps:
            self.one_step()
            ctx.checkpointer.save(self.step, ctx.state, ctx.train_iter.get_state())
            if self.step < config.num_steps and any(e.due(self.step, config.num_steps) for e in ctx.evaluators):
                self.evaluate()
            if preempted(self.preemption, self.step):
                self.writer.message(f"preemption signal: saving step {self.step} and stopping")
                ctx.checkpointer.save(self.step, ctx.state, ctx.train_iter.get_state(), force=True)
                break
            if stop_after_steps is not None and self.step - ctx.start_step >= stop_after_steps:
                break

    def one_step(self) -> None:
        ctx, config = self.ctx, self.ctx.config
        with self.timing.waiting_for_data():
            self.batch = next(ctx.train_iter)
        with self.timing.computing():
            ctx.state, step_metrics = ctx.compiled(ctx.state, self.batch)
        self.batch = None  # its host copy lives in the data workers' shared memory: let grain free it now
        self.step += 1
        self.writer.advance()
        if self.step % config.log_every_steps == 0 or self.step == config.num_steps:
            jax.block_until_ready(ctx.state.step)
            self.last_metrics = log_step(self.writer, self.step, step_metrics, ctx, self.timing)
            if int(ctx.state.nonfinite_in_a_row) >= config.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{int(ctx.state.nonfinite_in_a_row)} non-finite losses in a row at step {self.step} "
                    f"(config.max_consecutive_nonfinite = {config.max_consecutive_nonfinite}): stopping; "
                    f"the last good checkpoint is step {ctx.checkpointer.latest_step()}")

    def evaluate(self) -> None:
        """The evaluators due at this step (all of them at the end). A failing one is reported and skipped: it
        never costs the run."""
        num_steps, results = self.ctx.config.num_steps, {}
        for evaluator in self.ctx.evaluators:
            if not evaluator.due(self.step, num_steps):
                continue
            results[evaluator.name] = run_evaluator(evaluator, self.ctx.state.params, self.writer, self.step)
        self.eval_results = {**self.eval_results, **results}


def run_evaluator(evaluator, params, writer, step: int) -> dict:
    name = evaluator.name
    try:
        metrics = evaluator.run(params)
    except Exception as error:  # pylint: disable=broad-except
        writer.message(f"step {step}: evaluation {name} ({evaluator.settings['type']}) failed, skipped: {error}")
        return {"error": str(error)}
    writer.write(step, {f"eval/{name}/{k}": float(v) for k, v in metrics.items()}, console=False)
    writer.message(f"step {step}: {evaluator.settings['type'].replace('_', ' ')} {name} " +
                   " ".join(f"{k}={float(v):.4f}" for k, v in metrics.items()))
    return metrics


def write_summary(ctx: TrainContext, run: Run, saved: bool) -> dict:
    config, model, state, c = ctx.config, ctx.model, ctx.state, ctx.model.config
    # nothing ran in this call (a finished run started again): keep what was measured
    last_metrics = run.last_metrics or previous_summary(ctx.workdir).get("final", {})
    summary = {
        "model": config.model.name, "reduction": model.reduction.method,
        "tokens_per_block": model.reduction.tokens_per_block() or [1 + c.num_patches] * c.vision_layers,
        "steps": run.step, "finished": run.finished, "checkpoint_saved": saved,
        "latest_checkpoint": ctx.checkpointer.latest_step(),
        "flops_per_step_per_device": ctx.flops_per_step, "temp_bytes_per_device": ctx.temp_bytes,
        "nonfinite_total": int(state.nonfinite_total), "skipped_examples": ctx.train_iter.skipped,
        "final": last_metrics, "eval": run.eval_results,
        "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(), "global_batch_size": config.batch_size,
        "grad_accum_steps": config.optim.grad_accum_steps,
    }
    ctx.checkpointer.close()
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(ctx.workdir, "summary.json"), summary)
    if run.finished and not saved:
        raise RuntimeError(f"the final checkpoint of step {run.step} could not be saved (see the log); "
                           f"the latest good one is step {ctx.checkpointer.latest_step()}")
    return summary


def preempted(flag: checkpointing.PreemptionFlag, step: int) -> bool:
    if jax.process_count() > 1:  # every process must agree on the step: jax's preemption sync point
        return multihost_utils.reached_preemption_sync_point(step)
    return flag.is_set()


class StepTimer:
    """Wall time split into waiting for input and computing, between two log points."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.data_s = self.compute_s = 0.0
        self.steps = 0
        self.started = time.perf_counter()

    def waiting_for_data(self):
        return _Accumulate(self, "data_s")

    def computing(self):
        self.steps += 1
        return _Accumulate(self, "compute_s")


class _Accumulate:
    def __init__(self, timer, field):
        self.timer, self.field = timer, field

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        setattr(self.timer, self.field, getattr(self.timer, self.field) + time.perf_counter() - self.start)


def log_step(writer, step, step_metrics, ctx: TrainContext, timing: StepTimer) -> dict:
    config, state = ctx.config, ctx.state
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    elapsed = time.perf_counter() - timing.started
    step_time = elapsed / max(timing.steps, 1)
    tflops = ctx.flops_per_step / step_time / 1e12 if ctx.flops_per_step else None
    peak = ctx.peak_flops
    scalars = {
        "train/loss": values["loss"], "train/lr": values["learning_rate"], "train/grad_norm": values["grad_norm"],
        "train/logit_scale": values["logit_scale"],
        "perf/images_per_s": config.batch_size * timing.steps / elapsed,
        "perf/step_s": step_time,
        "perf/data_wait_fraction": timing.data_s / elapsed,
        "perf/tflops_per_device": tflops,
        "perf/mfu": tflops * 1e12 / peak if tflops and peak else None,
        "data/skipped_examples": float(sum(ctx.train_iter.skipped.values())),
        "train/nonfinite_total": float(state.nonfinite_total),
    }
    for i, tokens in enumerate(ctx.model.reduction.tokens_per_block()):
        scalars[f"tokens/block_{i:02d}"] = float(tokens)
    writer.write(step, scalars)
    writer.append_history(step, scalars)
    timing.reset()
    return {k: v for k, v in scalars.items() if not k.startswith("tokens/")}
