"""The train state and the jit-compiled training step: text tower first, the image tower guided by it,
a contrastive loss over the global batch, AdamW, and a skipped update when anything is non-finite."""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from elip_jax.data import normalize_images
from elip_jax.train.losses import Loss, get_loss


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


def make_loss_fn(model, loss: Loss):
    def loss_fn(params, images, tokens, rng):
        image_features, text_features, logit_scale = model.apply({"params": params}, images, tokens, rng=rng)
        return loss(params, image_features, text_features, logit_scale)
    return loss_fn


def accumulated_value_and_grad(loss_fn, params, images, tokens, rng, steps: int):
    """Mean loss and gradient over `steps` micro-batches, one at a time (activation memory of one).

    Micro-batch i takes examples i, i + steps, ...: with the batch split over devices in contiguous blocks,
    every device keeps contributing its own examples to every micro-batch, so nothing moves between devices.
    """
    grad_fn = jax.value_and_grad(loss_fn)
    if steps == 1:
        return grad_fn(params, images, tokens, rng)

    def micro(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)

    def body(carry, inputs):
        index, micro_images, micro_tokens = inputs
        loss, grads = grad_fn(params, micro_images, micro_tokens, jax.random.fold_in(rng, index))
        total_loss, total_grads = carry
        return (total_loss + loss, jax.tree_util.tree_map(jnp.add, total_grads, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(steps), micro(images), micro(tokens)))
    return loss / steps, jax.tree_util.tree_map(lambda g: g / steps, grads)


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule, *, loss_name,
                    logit_scale_max: float, grad_accum_steps: int = 1):
    """train_step(state, batch) -> (state, metrics); batch = {'images': uint8 [B,S,S,3], 'tokens': int32}.

    tx: the update direction without the learning rate (optim.make_optimizer); the step scales it by
    schedule(state.step), so skipped steps advance the rate exactly as they advance the logged step.
    loss_name: a registered loss's name or the `losses.Loss` itself.
    """
    loss_fn = make_loss_fn(model, get_loss(loss_name) if isinstance(loss_name, str) else loss_name)
    max_log_scale = math.log(logit_scale_max)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        images = normalize_images(batch["images"]).astype(model.config.compute_dtype)
        loss, grads = accumulated_value_and_grad(loss_fn, state.params, images, batch["tokens"], rng,
                                                 grad_accum_steps)
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
