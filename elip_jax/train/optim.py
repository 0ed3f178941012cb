"""AdamW with linear warm-up and cosine decay, CLIP's weight-decay exclusions and gradient clipping."""
from __future__ import annotations

import jax
import optax

# Parameters named like these never get weight decay: gains and biases (LayerNorm scale/bias, dense biases),
# the logit scale/bias (open_clip excludes these too) and, beyond open_clip, the token, class and positional
# embeddings, which are lookup tables rather than weights to shrink.
NO_DECAY_NAMES = ("bias", "scale", "embedding", "class_embedding", "positional_embedding", "logit_scale",
                  "logit_bias")


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
        decay_steps=max(num_steps, optim.warmup_steps + 1), end_value=optim.lr * optim.end_lr_ratio)


def decay_mask(params):
    """True for the parameters that get weight decay: matrices and kernels only."""
    def decays(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and not any(name.endswith(n) for n in NO_DECAY_NAMES)
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(optim, num_steps)
    steps = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm > 0 else []
    steps.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=decay_mask))
    return optax.chain(*steps)
