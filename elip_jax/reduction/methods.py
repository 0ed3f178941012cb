"""Scoring methods: how important each candidate token is at a pruning point (higher = keep).

Each scorer returns [B, C] fp32 scores for the candidates x[:, 1:] (CLS excluded) and never carries a
gradient. Blocks are passed in as callables (bound Flax submodules), so this package knows nothing of models.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class StageInputs:
    """What a scorer may look at before block `group[0]`.

    x: tokens [B, 1 + C, D] at the stage input. group: the blocks of this stage, in order (for the
    look-ahead). guide: text guidance already mapped into the vision width [B, D], or None.
    previous_cls_attention: head-averaged CLS-row attention [B, 1 + C] of the previous main-path block.
    """

    x: jax.Array
    group: Sequence
    mix: float
    guide: Optional[jax.Array] = None
    previous_cls_attention: Optional[jax.Array] = None
    rng: Optional[jax.Array] = None


def mix_guide_into_cls(x: jax.Array, guide: jax.Array, mix: float) -> jax.Array:
    """A copy of x whose CLS is (1 - mix) * guide + mix * CLS (docs/elip.md, one stage, step 2)."""
    cls = (1.0 - mix) * guide.astype(x.dtype) + mix * x[:, 0]
    return x.at[:, 0].set(cls)


def elip_scores(inputs: StageInputs) -> jax.Array:
    """ELIP: look ahead through the stage's blocks with a text-mixed CLS, score by the CLS-row attention
    of the stage's last block. Only that row of the last block is computed: same decisions, less work."""
    y = jax.lax.stop_gradient(mix_guide_into_cls(inputs.x, inputs.guide, inputs.mix))
    for block in inputs.group[:-1]:
        y = block(y)
    attention = inputs.group[-1].cls_attention(y)
    return jax.lax.stop_gradient(attention[:, 1:])


def elip_inline_scores(inputs: StageInputs) -> jax.Array:
    """Text-guided without look-ahead: the stage's first block scores the current tokens, its CLS query
    taken from the text-mixed CLS. Costs one LayerNorm and one key projection of the tokens."""
    y = jax.lax.stop_gradient(mix_guide_into_cls(inputs.x, inputs.guide, inputs.mix))
    return jax.lax.stop_gradient(inputs.group[0].cls_attention(y)[:, 1:])


def evit_scores(inputs: StageInputs) -> jax.Array:
    """EViT: the CLS-row attention the previous block of the main path already computed."""
    return jax.lax.stop_gradient(inputs.previous_cls_attention[:, 1:])


def random_scores(inputs: StageInputs) -> jax.Array:
    """FLIP: uniform scores, so the top-k is a uniformly random subset of the patches."""
    batch, tokens = inputs.x.shape[0], inputs.x.shape[1] - 1
    return jax.random.uniform(inputs.rng, (batch, tokens), jnp.float32)


SCORERS: dict[str, Callable[[StageInputs], jax.Array]] = {
    "elip": elip_scores,
    "elip_inline": elip_inline_scores,
    "evit": evit_scores,
    "random": random_scores,
}


def score_candidates(method: str, inputs: StageInputs) -> jax.Array:
    return SCORERS[method](inputs)
