"""The training loop: ELIP pre-training (or continued training) of a CLIP model over a device mesh."""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from elip_jax import data as data_lib
from elip_jax.accounting import xla_flops, xla_temp_bytes
from elip_jax.fileio import atomic_write_json
from elip_jax.models.clip import CLIP, schedule_for
from elip_jax.models.config import CLIPConfig, get_config
from elip_jax.train import checkpointing, metrics as metrics_lib, resume, sharding
from elip_jax.train.defaults import validate_config
from elip_jax.train.optim import learning_rate_schedule, make_optimizer
from elip_jax.train.step import TrainState, init_state, make_train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def model_config_from(config) -> CLIPConfig:
    """The architecture: from the converted checkpoint when continuing training, else the named one."""
    overrides = dict(dtype=config.model.dtype, remat=config.model.remat)
    if config.model.image_size:
        overrides["image_size"] = config.model.image_size
    if config.loss == "siglip":  # SigLIP's initialisation (open_clip): scale 10, bias -10
        overrides.update(init_logit_scale=float(np.log(10.0)), init_logit_bias=-10.0)
    if config.model.init_from:
        from elip_jax.checkpoints import read_config
        if "image_size" in overrides:
            raise ValueError("config.model.image_size cannot be combined with config.model.init_from: the checkpoint "
                             "fixes the resolution (convert it with --image-size to change it)")
        converted, _ = read_config(config.model.init_from)
        return converted.replace(**overrides)
    return get_config(config.model.name, **overrides)


def build_model(config) -> CLIP:
    model_config = model_config_from(config)
    r = config.reduction
    options = dict(method=r.method, mix=r.mix)
    if r.begin_layers:
        options["begin_layers"] = tuple(r.begin_layers)
    if r.keep_ratios:
        options["keep_ratios"] = tuple(r.keep_ratios)
    try:
        schedule = schedule_for(model_config, options)
    except ValueError as error:
        raise ValueError(f"config.reduction is invalid for {config.model.name} "
                         f"({model_config.num_patches} patches, {model_config.vision_layers} blocks): {error}")
    return CLIP(model_config, schedule)


def abstract_params(model: CLIP, config):
    """Shapes and dtypes of the parameters, without memory or compute."""
    if config.model.init_from:
        return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                                      converted_params(config))
    c = model.config
    images = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, c.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(config.seed), images, tokens)["params"]


def converted_params(config) -> dict:
    """The parameters of a converted checkpoint (host numpy), with SigLIP's bias added when needed."""
    from elip_jax.checkpoints import load_params
    params = load_params(config.model.init_from)
    if config.loss == "siglip":
        params.setdefault("logit_bias", np.float32(-10.0))
    return params


def prepare_data_config(config):
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.data_dir = config.data.data_dir or None
        name, _, variant = data_config.name.partition("/")
        if name == data_lib.BUILTIN_DATASET:  # generated offline on first use
            build = lambda: data_lib.prepare_builtin(data_config.data_dir, config=variant or "full")
            if jax.process_index() == 0:
                build()
            multihost_utils.sync_global_devices("builtin dataset ready")
            data_config.data_dir = build()  # already built: a lookup
    return data_config


def say(text: str) -> None:
    """A progress line before the progress bar exists (process 0), so that set-up is never silent."""
    if jax.process_index() == 0:
        print(text, flush=True)


def train(config, workdir: str, *, stop_after_steps: Optional[int] = None) -> dict:
    """Trains until config.num_steps (resuming from workdir's newest restorable checkpoint), returns the summary.

    Everything a user can get wrong (config values, the workdir, a resume that does not match the workdir, the
    dataset) is checked before anything compiles, and before anything is written to the workdir.
    stop_after_steps: stop early after this many steps of this call (tests of interrupted runs).
    """
    validate_config(config)
    data_lib.validate_data_config(config.data)
    model = build_model(config)
    mesh = sharding.make_mesh(config.mesh)
    micro_batch = config.batch_size // config.optim.grad_accum_steps
    if micro_batch % mesh.size:  # else every micro-batch would move examples between devices
        raise ValueError(f"config.batch_size / config.optim.grad_accum_steps = {micro_batch} must be a multiple "
                         f"of the number of devices ({mesh.size})")
    resume.check_writable(workdir)
    model_record = dataclasses.asdict(model.config)
    resume.check_resumable(workdir, config.to_dict(), model_record)

    tx = make_optimizer(config.optim)
    schedule = learning_rate_schedule(config.optim, config.num_steps)
    batch_sharding = sharding.batch_sharding(mesh)
    abstract_state = jax.eval_shape(lambda p: init_state(p, tx, config.seed), abstract_params(model, config))
    state_shardings = sharding.state_shardings(abstract_state, mesh, config.param_sharding)
    data_config = prepare_data_config(config)
    data_lib.check_dataset(data_config.name, data_config.split, data_config.data_dir,  # before anything compiles
                           keys={"config.data.image_key": data_config.image_key,
                                 "config.data.caption_key": data_config.caption_key})
    train_iter = data_lib.make_train_iterator(data_config, global_batch_size=config.batch_size,
                                              image_size=model.config.image_size, seed=config.seed,
                                              sharding=batch_sharding, context_length=model.config.context_length)
    try:
        checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                                  every_steps=config.checkpoint.every_steps,
                                                  keep=config.checkpoint.keep,
                                                  async_save=config.checkpoint.async_save)
        state = restore_or_init(model, config, tx, checkpointer, abstract_state, state_shardings, train_iter)
    except BaseException:
        train_iter.close()
        raise
    start_step = int(state.step)
    if jax.process_index() == 0:
        resume.write_records(workdir, config.to_dict(), model_record, start_step)

    if start_step < config.num_steps:
        say(f"compiling the training step ({config.model.name}, batch {config.batch_size}, "
            f"{model.reduction.method}) ...")
        compiled = compile_train_step(model, config, mesh, tx, schedule, state_shardings, state)
        flops_per_step, temp_bytes = step_costs(compiled, config)
    else:  # finished already: nothing to step, only the final evaluation to repeat
        before = previous_summary(workdir)
        flops_per_step, temp_bytes = before.get("flops_per_step_per_device"), before.get("temp_bytes_per_device")
    peak = metrics_lib.peak_flops_per_device(config.peak_flops_per_device)

    writer = metrics_lib.MetricsWriter(workdir, config.num_steps, start_step)
    writer.message(f"elip_jax: {config.model.name} reduction={model.reduction.method} tokens per block "
                   f"{model.reduction.tokens_per_block() or 'unpruned'}; {jax.process_count()} process(es), "
                   f"{jax.device_count()} device(s) ({jax.devices()[0].device_kind}); "
                   f"starting at step {start_step} of {config.num_steps}")
    # one process: our SIGTERM handler; many: jax's own preemption notifier keeps the signal (see preempted)
    preemption = checkpointing.PreemptionFlag()
    if jax.process_count() == 1:
        preemption.install()
    last_metrics, timing = {}, StepTimer()
    step, eval_results, batch = start_step, {}, None
    try:
        while step < config.num_steps:
            with timing.waiting_for_data():
                batch = next(train_iter)
            with timing.computing():
                state, step_metrics = compiled(state, batch)
            batch = None  # its host copy lives in the data workers' shared memory: let grain free it now
            step += 1
            writer.advance()
            if step % config.log_every_steps == 0 or step == config.num_steps:
                jax.block_until_ready(state.step)
                last_metrics = log_step(writer, step, step_metrics, state, timing, flops_per_step, peak,
                                        config, model, train_iter)
                if int(state.nonfinite_in_a_row) >= config.max_consecutive_nonfinite:
                    raise NonFiniteLossError(
                        f"{int(state.nonfinite_in_a_row)} non-finite losses in a row at step {step} "
                        f"(config.max_consecutive_nonfinite = {config.max_consecutive_nonfinite}): stopping; "
                        f"the last good checkpoint is step {checkpointer.latest_step()}")
            checkpointer.save(step, state, train_iter.get_state())
            if config.eval.every_steps and step % config.eval.every_steps == 0 and step < config.num_steps:
                eval_results = evaluate_zero_shot(model, state, config, data_config, writer, step)
            if preempted(preemption, checkpointer, step):
                writer.message(f"preemption signal: saving step {step} and stopping")
                checkpointer.save(step, state, train_iter.get_state(), force=True)
                break
            if stop_after_steps is not None and step - start_step >= stop_after_steps:
                break
        finished = step >= config.num_steps
        if finished:
            checkpointer.save(step, state, train_iter.get_state(), force=True)
            eval_results = evaluate_zero_shot(model, state, config, data_config, writer, step)
        saved = checkpointer.wait()
    finally:
        preemption.uninstall()
        writer.close()
        batch = None  # (after an exception) so that grain unlinks its shared memory before the workers stop
        gc.collect()
        train_iter.close()

    if not last_metrics:  # nothing ran in this call (a finished run started again): keep what was measured
        last_metrics = previous_summary(workdir).get("final", {})
    summary = {
        "model": config.model.name, "reduction": model.reduction.method,
        "tokens_per_block": model.reduction.tokens_per_block() or [1 + c.num_patches] * c.vision_layers,
        "steps": step, "finished": finished, "checkpoint_saved": saved,
        "latest_checkpoint": checkpointer.latest_step(),
        "flops_per_step_per_device": flops_per_step, "temp_bytes_per_device": temp_bytes,
        "nonfinite_total": int(state.nonfinite_total), "skipped_examples": train_iter.skipped,
        "final": last_metrics, "eval": eval_results,
        "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(), "global_batch_size": config.batch_size,
        "grad_accum_steps": config.optim.grad_accum_steps,
    }
    checkpointer.close()
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    if finished and not saved:
        raise RuntimeError(f"the final checkpoint of step {step} could not be saved (see the log); "
                           f"the latest good one is step {checkpointer.latest_step()}")
    return summary


def previous_summary(workdir: str) -> dict:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def compile_train_step(model, config, mesh, tx, schedule, state_shardings, state_like):
    """The jit-compiled training step for this config's global batch; state_like: the state or its
    jax.ShapeDtypeStruct tree with shardings (compiling costs no memory for parameters then)."""
    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = jax.jit(make_train_step(model, tx, schedule, loss_name=config.loss,
                                      logit_scale_max=config.logit_scale_max,
                                      grad_accum_steps=config.optim.grad_accum_steps),
                      in_shardings=(state_shardings, batch_sharding),
                      out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    c = model.config
    batch_spec = {"images": jax.ShapeDtypeStruct((config.batch_size, c.image_size, c.image_size, 3), jnp.uint8,
                                                 sharding=batch_sharding),
                  "tokens": jax.ShapeDtypeStruct((config.batch_size, c.context_length), jnp.int32,
                                                 sharding=batch_sharding)}
    return step_fn.lower(state_like, batch_spec).compile()


def step_costs(compiled, config) -> tuple[Optional[float], Optional[int]]:
    """(FLOPs, temporary bytes) per device of one training step, from XLA's cost and memory analysis."""
    flops = xla_flops(compiled)
    if flops and config.optim.grad_accum_steps > 1:
        flops *= config.optim.grad_accum_steps  # XLA counts the body of the micro-batch loop once
    return flops, xla_temp_bytes(compiled)


def restore_or_init(model, config, tx, checkpointer, abstract_state, state_shardings, train_iter) -> TrainState:
    """The newest checkpoint that restores (resharded onto this run's devices), else a fresh state."""
    target = jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract_state, state_shardings)
    restored = checkpointer.restore_newest(target, report=say)
    if restored is not None:
        state, data_state, _ = restored
        train_iter.set_state(data_state)
        return state
    make_state = jax.jit(lambda params: init_state(params, tx, config.seed), out_shardings=state_shardings)
    if config.model.init_from:
        # every process holds the same host copy; each device takes its part of it
        params = jax.tree_util.tree_map(
            lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
            converted_params(config), state_shardings.params)
        return make_state(params)
    c = model.config
    init = lambda key: model.init(key, jnp.zeros((1, c.image_size, c.image_size, 3)),
                                  jnp.zeros((1, c.context_length), jnp.int32))["params"]
    params = jax.jit(init, out_shardings=state_shardings.params)(jax.random.PRNGKey(config.seed))
    return make_state(params)


def preempted(flag: checkpointing.PreemptionFlag, checkpointer, step: int) -> bool:
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


def log_step(writer, step, step_metrics, state, timing: StepTimer, flops_per_step, peak, config, model,
             train_iter) -> dict:
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    elapsed = time.perf_counter() - timing.started
    step_time = elapsed / max(timing.steps, 1)
    tflops = flops_per_step / step_time / 1e12 if flops_per_step else None
    scalars = {
        "train/loss": values["loss"], "train/lr": values["learning_rate"], "train/grad_norm": values["grad_norm"],
        "train/logit_scale": values["logit_scale"],
        "perf/images_per_s": config.batch_size * timing.steps / elapsed,
        "perf/step_s": step_time,
        "perf/data_wait_fraction": timing.data_s / elapsed,
        "perf/tflops_per_device": tflops,
        "perf/mfu": tflops * 1e12 / peak if tflops and peak else None,
        "data/skipped_examples": float(sum(train_iter.skipped.values())),
        "train/nonfinite_total": float(state.nonfinite_total),
    }
    for i, tokens in enumerate(model.reduction.tokens_per_block()):
        scalars[f"tokens/block_{i:02d}"] = float(tokens)
    writer.write(step, scalars)
    writer.append_history(step, scalars)
    timing.reset()
    return {k: v for k, v in scalars.items() if not k.startswith("tokens/")}


def evaluate_zero_shot(model, state, config, data_config, writer, step) -> dict:
    """Zero-shot classification on the configured datasets (unguided: ELIP never sees the ground truth).

    A dataset that cannot be evaluated (not prepared, no labels) is reported and skipped: it never costs the run.
    """
    from elip_jax.evaluate import evaluate, with_reduction
    results = {}
    eval_model = with_reduction(model, config.eval.reduction)
    for name in config.eval.datasets:
        dataset = name or data_config.name
        data_dir = data_config.data_dir if dataset == data_config.name else (config.eval.data_dir or None)
        try:
            result = evaluate(eval_model, {"params": state.params}, task="zeroshot_classification",
                              dataset=dataset, split=config.eval.split, data_dir=data_dir,
                              batch_size=config.eval.batch_size, compute_flops=False)
        except Exception as error:  # pylint: disable=broad-except
            writer.message(f"step {step}: zero-shot evaluation on {dataset} failed, skipped: {error}")
            results[dataset] = {"error": str(error)}
            continue
        results[dataset] = result["metrics"]
        writer.write(step, {f"eval/{dataset}/{k}": float(v) for k, v in result["metrics"].items()}, console=False)
        writer.message(f"step {step}: zero-shot {dataset} " +
                       " ".join(f"{k}={float(v):.4f}" for k, v in result["metrics"].items()))
    return results
