"""The train state and the jit-compiled training step: the objective's loss (by default the text tower first,
the image tower guided by it, a contrastive loss over the global batch; objectives.py), gradients of the trained
parameters only, AdamW, and a skipped update when anything is non-finite."""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from elip_jax.train.losses import Loss, get_loss
from elip_jax.train.optim import frozen_labels


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 scalar: updates attempted so far (skipped ones included)
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key: the step's key is fold_in(rng, step), so a resumed run draws the same
    nonfinite_in_a_row: jax.Array
    nonfinite_total: jax.Array


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(seed),
                      nonfinite_in_a_row=zero, nonfinite_total=zero)


def trained_value_and_grad(loss_fn, frozen=()):
    """value_and_grad of loss_fn(params, *args) over the parameters NOT matched by the `frozen` regexes only.

    Frozen parameters enter the loss as constants, so no backward pass is built for them: a frozen backbone under
    a small trained head costs its forward alone (tests/test_patch_ranking_predictor.py measures it with XLA's
    FLOPs). Their gradient is returned as zeros, so the tree keeps its structure for the optimizer (which gives
    them no update and no moments, optim.make_optimizer) and they add nothing to the gradient norm.
    """
    if not frozen:
        return jax.value_and_grad(loss_fn)

    def value_and_grad(params, *args):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        trained = [label == "trained" for label in jax.tree_util.tree_leaves(frozen_labels(frozen, params))]

        def loss_of_trained(trained_leaves):
            it = iter(trained_leaves)
            full = [next(it) if t else jax.lax.stop_gradient(leaf) for leaf, t in zip(leaves, trained)]
            return loss_fn(treedef.unflatten(full), *args)

        value, grads = jax.value_and_grad(loss_of_trained)([leaf for leaf, t in zip(leaves, trained) if t])
        it = iter(grads)
        return value, treedef.unflatten([next(it) if t else jnp.zeros_like(leaf) for leaf, t in zip(leaves, trained)])

    return value_and_grad


def accumulated_value_and_grad(loss_fn, params, batch: dict, rng, steps: int, frozen=()):
    """Mean loss and gradient over `steps` micro-batches of `batch` (a dict of [B, ...] arrays), one at a time
    (activation memory of one). loss_fn(params, micro_batch, rng).

    Micro-batch i takes examples i, i + steps, ...: with the batch split over devices in contiguous blocks,
    every device keeps contributing its own examples to every micro-batch, so nothing moves between devices.
    """
    grad_fn = trained_value_and_grad(loss_fn, frozen)
    if steps == 1:
        return grad_fn(params, batch, rng)

    def micro(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)

    def body(carry, inputs):
        index, micro_batch = inputs
        loss, grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        total_loss, total_grads = carry
        return (total_loss + loss, jax.tree_util.tree_map(jnp.add, total_grads, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(steps), jax.tree_util.tree_map(micro, batch)))
    return loss / steps, jax.tree_util.tree_map(lambda g: g / steps, grads)


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule, *, loss_name,
                    logit_scale_max: float, grad_accum_steps: int = 1, objective=None, frozen=()):
    """train_step(state, batch) -> (state, metrics); batch as the objective says (default CLIP_PAIRS:
    {'images': uint8 [B,S,S,3], 'tokens': int32}).

    tx: the update direction without the learning rate (optim.make_optimizer); the step scales it by
    schedule(state.step), so skipped steps advance the rate exactly as they advance the logged step.
    loss_name: a registered loss's name or the `losses.Loss` itself. objective: an `objectives.Objective`.
    frozen: config.optim.frozen's regexes; those parameters get no gradient computed (trained_value_and_grad).
    """
    from elip_jax.train.objectives import CLIP_PAIRS
    loss = get_loss(loss_name) if isinstance(loss_name, str) else loss_name
    loss_fn = (objective or CLIP_PAIRS).loss_fn(model, loss)
    max_log_scale = math.log(logit_scale_max)
    frozen = tuple(frozen or ())

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = accumulated_value_and_grad(loss_fn, state.params, batch, rng, grad_accum_steps, frozen)
        learning_rate = schedule(state.step)  # the step counter, the one that is logged (see optim.py)
        directions, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree_util.tree_map(lambda d: (-learning_rate * d).astype(d.dtype), directions)
        params = optax.apply_updates(state.params, updates)
        params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], max_log_scale)}
        finite = jnp.isfinite(loss) & all_finite(grads)
        keep_old = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=keep_old(params, state.params),
            opt_state=keep_old(opt_state, state.opt_state),
            nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite,
                   "logit_scale": jnp.exp(new_state.params["logit_scale"]), "learning_rate": learning_rate}
        return new_state, metrics

    return train_step
