"""The trainer's set-up: every decision a run makes once (initialisation, loss, optimizer, shardings, data,
evaluators, the compiled step), checked before anything compiles and before anything is written, gathered
in a `TrainContext` that the loop (loop.py) only steps with.

    plan(config)            model, loss, mesh, optimizer and the state's layout (no data, no workdir)
    setup(config, workdir)  the plan, the workdir's checks and records, data, checkpointer, state, evaluators

Both take an `objective` (objectives.py): what the batch is and what the loss of a batch is; by default
contrastive pre-training on image-text pairs (CLIP_PAIRS). An objective may bring its own data and evaluators.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from elip_jax import checkpoints, data as data_lib
from elip_jax.accounting import xla_flops, xla_temp_bytes
from elip_jax.models.clip import CLIP, schedule_for
from elip_jax.models.config import CLIPConfig, get_config
from elip_jax.train import checkpointing, metrics as metrics_lib, resume, sharding
from elip_jax.train.defaults import validate_config
from elip_jax.train.losses import Loss, get_loss
from elip_jax.train.objectives import CLIP_PAIRS, Objective
from elip_jax.train.optim import check_frozen, learning_rate_schedule, make_optimizer
from elip_jax.train.step import TrainState, init_state, make_train_step


def say(text: str) -> None:
    """A progress line before the progress bar exists (process 0), so that set-up is never silent."""
    if jax.process_index() == 0:
        print(text, flush=True)


@dataclasses.dataclass(frozen=True)
class Init:
    """Where a fresh run's parameters come from, decided once: a checkpoint's (host numpy) or random."""
    model_config: CLIPConfig
    params: Optional[dict] = None  # None: random, drawn with config.seed

    @property
    def from_checkpoint(self) -> bool:
        return self.params is not None


def decide_init(config, loss: Loss) -> Init:
    """The architecture and initial parameters: config.model.init_from (a converted folder or a training workdir,
    read through elip_jax.checkpoints.load) when set, else the named architecture with the loss's initialisation."""
    overrides = dict(dtype=config.model.dtype, remat=config.model.remat)
    if config.model.image_size:
        overrides["image_size"] = config.model.image_size
    if not config.model.init_from:
        return Init(get_config(config.model.name, **overrides, **loss.model_overrides()))
    if "image_size" in overrides:
        raise ValueError("config.model.image_size cannot be combined with config.model.init_from: the checkpoint "
                         "fixes the resolution (convert it with --image-size to change it)")
    if not os.path.isdir(config.model.init_from):
        raise ValueError(f"config.model.init_from = {config.model.init_from!r} is invalid: expected a converted "
                         "folder (python -m elip_jax.convert) or a training workdir")
    from elip_jax.checkpoints import load
    loaded, variables, _ = load(config.model.init_from, reduction="none")
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(variables["params"]))
    if loss.learns_bias:  # a checkpoint trained with another loss has no bias: the loss's own initial value
        overrides.update(loss.model_overrides())
        params.setdefault("logit_bias", np.float32(loss.init_logit_bias))
    return Init(loaded.config.replace(**overrides), params)


def build_model(config, init: Optional[Init] = None) -> CLIP:
    model_config = (init or decide_init(config, get_loss(config.loss))).model_config
    r = config.reduction
    options = dict(method=r.method, mix=r.mix)
    if r.begin_layers:
        options["begin_layers"] = tuple(r.begin_layers)
    if r.keep_ratios:
        options["keep_ratios"] = tuple(r.keep_ratios)
    if r.keep:
        options["keep"] = tuple(r.keep)
    if r.r >= 0:
        options["r"] = r.r
    if r.decreasing:
        options["decreasing"] = True
    if r.protected:
        options["protected"] = r.protected
    try:
        schedule = schedule_for(model_config, options)
    except ValueError as error:
        raise ValueError(f"config.reduction is invalid for {config.model.name} "
                         f"({model_config.num_patches} patches, {model_config.vision_layers} blocks): {error}")
    return CLIP(model_config, schedule)


def abstract_params(model: CLIP, init: Init, seed: int):
    """Shapes and dtypes of the parameters, without memory or compute."""
    if init.from_checkpoint:
        return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), init.params)
    c = model.config
    images = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, c.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(seed), images, tokens)["params"]


@dataclasses.dataclass
class Plan:
    """What a training step is, before any data or workdir: model, loss, mesh, optimizer, the state's layout."""
    config: Any
    init: Init
    model: CLIP
    loss: Loss
    mesh: Mesh
    tx: optax.GradientTransformation
    lr_schedule: Callable
    abstract_state: Any
    state_shardings: Any
    objective: Objective = CLIP_PAIRS


def fit_init(model: CLIP, init: Init, seed: int) -> Init:
    """A checkpoint's parameters with those the model's reduction method owns (a scorer's, learnable tokens)
    added, freshly initialised with `seed` where the checkpoint has none (e.g. a predictor about to be trained)."""
    if not init.from_checkpoint:
        return init
    fitted = checkpoints.fit_variables(model, {"params": init.params}, seed)["params"]
    if fitted is init.params:
        return init
    return dataclasses.replace(init, params=jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), fitted))


def plan(config, objective: Optional[Objective] = None) -> Plan:
    """Validates config and decides init, loss, optimizer (with its frozen groups) and shardings (with
    config.sharding_rules); raises ValueError naming the key before anything compiles."""
    validate_config(config)
    loss = get_loss(config.loss)
    init = decide_init(config, loss)
    model = build_model(config, init)
    init = fit_init(model, init, config.seed)
    mesh = sharding.make_mesh(config.mesh)
    micro_batch = config.batch_size // config.optim.grad_accum_steps
    if micro_batch % mesh.size:  # else every micro-batch would move examples between devices
        raise ValueError(f"config.batch_size / config.optim.grad_accum_steps = {micro_batch} must be a multiple "
                         f"of the number of devices ({mesh.size})")
    params_shape = abstract_params(model, init, config.seed)
    check_frozen(tuple(config.optim.get("frozen", ())), params_shape)
    tx = make_optimizer(config.optim)
    abstract_state = jax.eval_shape(lambda p: init_state(p, tx, config.seed), params_shape)
    state_shardings = sharding.state_shardings(abstract_state, mesh, config.param_sharding,
                                               tuple(config.get("sharding_rules", ())))
    return Plan(config, init, model, loss, mesh, tx, learning_rate_schedule(config.optim, config.num_steps),
                abstract_state, state_shardings, objective or CLIP_PAIRS)


def compile_train_step(p: Plan, state_like):
    """The jit-compiled training step for the plan's global batch; state_like: the state or its
    jax.ShapeDtypeStruct tree with shardings (compiling costs no memory for parameters then)."""
    config, model = p.config, p.model
    batch_sharding = sharding.batch_sharding(p.mesh)
    step_fn = jax.jit(make_train_step(model, p.tx, p.lr_schedule, loss_name=p.loss,
                                      logit_scale_max=config.logit_scale_max,
                                      grad_accum_steps=config.optim.grad_accum_steps, objective=p.objective,
                                      frozen=tuple(config.optim.get("frozen", ()))),
                      in_shardings=(p.state_shardings, batch_sharding),
                      out_shardings=(p.state_shardings, sharding.replicated(p.mesh)), donate_argnums=(0,))
    batch_spec = {name: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=batch_sharding)
                  for name, spec in p.objective.batch_spec(model, config.batch_size).items()}
    return step_fn.lower(state_like, batch_spec).compile()


def abstract_state_with_shardings(p: Plan):
    return jax.tree_util.tree_map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                                  p.abstract_state, p.state_shardings)


def step_costs(compiled, config) -> tuple[Optional[float], Optional[int]]:
    """(FLOPs, temporary bytes) per device of one training step, from XLA's cost and memory analysis."""
    flops = xla_flops(compiled)
    if flops and config.optim.grad_accum_steps > 1:
        flops *= config.optim.grad_accum_steps  # XLA counts the body of the micro-batch loop once
    return flops, xla_temp_bytes(compiled)


def prepare_data_config(config):
    """The data config with the dataset's canonical name and the folder that holds it (the built-in dataset is
    generated there on first use, by process 0 while the others wait)."""
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.name = data_lib.canonical_name(data_config.name)
        data_config.data_dir = data_lib.resolve_data_dir(data_config.name, config.data.data_dir or None)
    return data_config


def open_train_data(config, p: Plan):
    """The training data's config (built-in dataset prepared) and its iterator, the dataset checked first."""
    data_config = prepare_data_config(config)
    data_lib.check_dataset(data_config.name, data_config.split, data_config.data_dir,  # before anything compiles
                           keys={"config.data.image_key": data_config.image_key,
                                 "config.data.caption_key": data_config.caption_key})
    c = p.model.config
    train_iter = data_lib.make_train_iterator(data_config, global_batch_size=config.batch_size,
                                              image_size=c.image_size, seed=config.seed,
                                              sharding=sharding.batch_sharding(p.mesh),
                                              context_length=c.context_length)
    return data_config, train_iter


def evals_config(config, data_config) -> dict:
    """config.evals, or (when empty) the zero-shot classification that config.eval describes, one evaluator per
    dataset named after it ("" is the training dataset, read from the training data's folder)."""
    if config.get("evals"):
        return {name: dict(entry) for name, entry in config.evals.items()}
    e, evals = config.eval, {}
    for name in e.datasets:
        dataset = name or data_config.name
        data_dir = data_config.data_dir if dataset == data_config.name else e.data_dir
        evals[dataset] = dict(type="zeroshot_classification", dataset=dataset, split=e.split,
                              data_dir=data_dir or "", batch_size=e.batch_size, every_steps=e.every_steps,
                              reduction=e.reduction)
    return evals


def build_evaluators(config, model, data_config) -> list:
    from elip_jax.evaluate.evaluators import build_evaluators as build
    return build(evals_config(config, data_config), model, default_dataset=data_config.name,
                 default_data_dir=data_config.data_dir)


def restore_or_init(p: Plan, checkpointer, train_iter) -> TrainState:
    """The newest checkpoint that restores (resharded onto this run's devices), else a fresh state."""
    restored = checkpointer.restore_newest(abstract_state_with_shardings(p), report=say)
    if restored is not None:
        state, data_state, _ = restored
        train_iter.set_state(data_state)
        return state
    seed = p.config.seed
    make_state = jax.jit(lambda params: init_state(params, p.tx, seed), out_shardings=p.state_shardings)
    if p.init.from_checkpoint:
        # every process holds the same host copy; each device takes its part of it
        params = jax.tree_util.tree_map(
            lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
            p.init.params, p.state_shardings.params)
        return make_state(params)
    c = p.model.config
    init = lambda key: p.model.init(key, jnp.zeros((1, c.image_size, c.image_size, 3)),
                                    jnp.zeros((1, c.context_length), jnp.int32))["params"]
    params = jax.jit(init, out_shardings=p.state_shardings.params)(jax.random.PRNGKey(seed))
    return make_state(params)


@dataclasses.dataclass
class TrainContext:
    """Everything the loop needs, decided once by `setup`."""
    plan: Plan
    workdir: str
    data_config: Any
    train_iter: Any
    checkpointer: checkpointing.Checkpointer
    state: TrainState
    start_step: int
    compiled: Optional[Callable]  # None when the run is finished already (nothing to step)
    flops_per_step: Optional[float]
    temp_bytes: Optional[int]
    peak_flops: Optional[float]
    evaluators: list

    @property
    def config(self):
        return self.plan.config

    @property
    def model(self) -> CLIP:
        return self.plan.model


def previous_summary(workdir: str) -> dict:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def setup(config, workdir: str, objective: Optional[Objective] = None) -> TrainContext:
    """Everything a user can get wrong (config values, the workdir, a resume that does not match the workdir, the
    dataset, the evaluators) is checked before anything compiles, and before anything is written to the workdir.
    objective: what is trained (objectives.py); default contrastive pre-training on image-text pairs."""
    validate_config(config)
    data_lib.validate_data_config(config.data)
    p = plan(config, objective)
    resume.check_writable(workdir)
    model_record = dataclasses.asdict(p.model.config)
    resume.check_resumable(workdir, config.to_dict(), model_record)
    data_config, train_iter = p.objective.open_data(config, p) or open_train_data(config, p)
    checkpointer = None
    try:
        evaluators = p.objective.build_evaluators(config, p, data_config)
        if evaluators is None:
            evaluators = build_evaluators(config, p.model, data_config)
        checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                                  every_steps=config.checkpoint.every_steps,
                                                  keep=config.checkpoint.keep,
                                                  async_save=config.checkpoint.async_save)
        state = restore_or_init(p, checkpointer, train_iter)
        start_step = int(state.step)
        if jax.process_index() == 0:
            resume.write_records(workdir, config.to_dict(), model_record, start_step)
            checkpoints.write_reduction(workdir, p.model.reduction)  # loading the workdir restores the schedule
        compiled, flops, temp_bytes = compile_or_recall(p, state, start_step, workdir)
    except BaseException:
        train_iter.close()
        if checkpointer is not None:  # Orbax's threads, left running, print tracebacks at interpreter exit
            checkpointer.close()
        raise
    return TrainContext(p, workdir, data_config, train_iter, checkpointer, state, start_step, compiled, flops,
                        temp_bytes, metrics_lib.peak_flops_per_device(config.peak_flops_per_device), evaluators)


def compile_or_recall(p: Plan, state, start_step: int, workdir: str):
    """(compiled step, FLOPs, temporary bytes); a finished run compiles nothing and recalls its costs."""
    config = p.config
    if start_step >= config.num_steps:  # only the final evaluation to repeat
        before = previous_summary(workdir)
        return None, before.get("flops_per_step_per_device"), before.get("temp_bytes_per_device")
    say(f"compiling the training step ({config.model.name}, batch {config.batch_size}, "
        f"{p.model.reduction.method}) ...")
    compiled = compile_train_step(p, state)
    return (compiled, *step_costs(compiled, config))
