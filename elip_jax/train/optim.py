"""AdamW with linear warm-up and cosine decay, CLIP's weight-decay exclusions and gradient clipping.

One counter drives the learning rate: the train state's step. The optimizer here returns AdamW's update
direction (Adam, plus decoupled weight decay) without the learning rate, and the train step scales it by
`schedule(state.step)`. optax's own schedule would count only the updates applied, so after a skipped
(non-finite) step it would lag the step counter, and the logged rate would not be the one used.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

# Parameters named like these never get weight decay: gains and biases (LayerNorm scale/bias, dense biases),
# the logit scale/bias (open_clip excludes these too) and, beyond open_clip, the token, class and positional
# embeddings, which are lookup tables rather than weights to shrink.
NO_DECAY_NAMES = ("bias", "scale", "embedding", "class_embedding", "positional_embedding", "logit_scale",
                  "logit_bias")


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
    """open_clip's schedule: linear warm-up, then cosine decay to lr * end_lr_ratio at num_steps.

    Warm-up starts at lr / warmup_steps (step 0 already learns) and reaches lr at step warmup_steps - 1:
    step s < warmup_steps uses lr * (s + 1) / warmup_steps. From step warmup_steps the rate follows
    end + (lr - end) * (1 + cos(pi * (s - warmup_steps) / (num_steps - warmup_steps))) / 2.
    """
    peak, warmup = float(optim.lr), int(optim.warmup_steps)
    end = peak * float(optim.end_lr_ratio)
    decay_steps = max(num_steps - warmup, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1) / max(warmup, 1)
        progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup, warm, cosine)

    return schedule


def decay_mask(params):
    """True for the parameters that get weight decay: matrices and kernels only."""
    def decays(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and not any(name.endswith(n) for n in NO_DECAY_NAMES)
    return jax.tree_util.tree_map_with_path(decays, params)


def param_path(path) -> str:
    """A leaf's '/'-joined path ('text/ln_final/scale'): what frozen groups and sharding rules match."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def frozen_labels(frozen, params):
    """'frozen' for every parameter whose path matches one of the regexes in `frozen`, else 'trained'."""
    def label(path, _):
        name = param_path(path)
        return "frozen" if any(re.search(pattern, name) for pattern in frozen) else "trained"
    return jax.tree_util.tree_map_with_path(label, params)


def check_frozen(frozen, params) -> None:
    """Every regex of config.optim.frozen must name at least one parameter (else it is a typo)."""
    names = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern in frozen:
        if not any(re.search(pattern, name) for name in names):
            raise ValueError(f"config.optim.frozen: {pattern!r} matches no parameter (paths look like "
                             f"{names[0]!r}; {len(names)} in all)")


def make_optimizer(optim) -> optax.GradientTransformation:
    """AdamW's update direction, before the learning rate: clip, Adam, decoupled weight decay (optax.adamw
    without its final scale_by_learning_rate). The train step multiplies by -schedule(state.step).

    optim.frozen (regexes over parameter paths, as big_vision's siglip_lit config): those parameters get a zero
    update and no optimizer state, and their gradients do not count in the clipping norm.
    """
    steps = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm > 0 else []
    steps.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
    steps.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask))
    adamw = optax.chain(*steps)
    frozen = tuple(getattr(optim, "frozen", ()) or ())  # a ConfigDict, or any namespace of the same fields
    if not frozen:
        return adamw
    return optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()},
                                 lambda params: frozen_labels(frozen, params))
