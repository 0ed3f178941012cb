"""Patch Ranking's pruned inference (Wu et al., WACV 2025; docs/patch_ranking.md): a small learned predictor
scores every patch from the tokens entering the prune layer, and the tower keeps the top `keep` patches there,
once, dropping the rest (no merged token). CLS and protected (learnable) tokens are never candidates.

The predictor, built from the paper's description, not from its code:
  patch tokens [B, P, D] -> average-pool the channels to 64 (groups of D / 64 adjacent channels)
  -> one MLP-Mixer block: x + token_mlp(LN(x)^T)^T, then x + channel_mlp(LN(x)) (LayerNorm eps 1e-6, exact GELU)
  -> LayerNorm -> a linear score per patch: logits [B, P] (higher = keep).
Hidden sizes: the MLP-Mixer paper's ratios on the 64 pooled channels, token MLP 64 / 2 = 32 and channel MLP
4 * 64 = 256. For ViT-B/16 (P = 196) that is 46,309 parameters, the paper's "about 46k" (the token MLP's
196 -> 32 -> 196 is the only part that depends on P; tests/test_patch_ranking_predictor.py counts it).

The predictor is trained against golden rankings (elip_jax.patch_ranking); its parameters live with the model at
params['visual']['reduction_scorer'], so they load with it.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from elip_jax.reduction import registry
from elip_jax.reduction.methods import StageInputs

POOLED_CHANNELS = 64
TOKEN_HIDDEN = POOLED_CHANNELS // 2  # the Mixer paper's token-mixing width: half the channels
CHANNEL_HIDDEN = 4 * POOLED_CHANNELS  # and its channel-mixing width: four times the channels
MIXER_LN_EPS = 1e-6
# The published setting: prune before block 3 of a 12-block tower, remove 40 % of the patches (78 of 196).
PRUNE_LAYER_12 = 3
REMOVE_FRACTION = 0.4

FLOPS_FORMULA = ("at the prune stage, P patches of width D, C = 64 pooled channels, token hidden 32, channel "
                 "hidden 256: pooling P*D + token MLP 2*2*P*32*C + channel MLP 2*2*P*C*256 + score 2*P*C "
                 "(forward only; LayerNorms and GELUs not counted)")


def pool_channels(x: jax.Array, channels: int = POOLED_CHANNELS) -> jax.Array:
    """Average-pool the last axis of x [..., D] to `channels` (groups of D / channels adjacent channels).

    D must be a multiple of `channels`, as for every CLIP width (768, 1024, ...) and the tiny models' 64.
    """
    width = x.shape[-1]
    if width % channels:
        raise ValueError(f"the predictor pools the token width {width} to {channels} channels: the width must be a "
                         f"multiple of {channels}")
    return x.reshape(x.shape[:-1] + (channels, width // channels)).mean(axis=-1)


def default_prune_layer(depth: int) -> int:
    """Block 3 of 12 scaled to the tower's depth, round(3 * depth / 12), at least block 1 (4 blocks: 1)."""
    return max(int(math.floor(PRUNE_LAYER_12 * depth / 12 + 0.5)), 1)


def default_remove_count(num_patches: int) -> int:
    """The patches removed by default: floor(0.4 * P) (78 of 196)."""
    return int(math.floor(REMOVE_FRACTION * num_patches + 1e-9))


def default_keep(num_patches: int) -> int:
    """The patches kept by default: P - floor(0.4 * P) (118 of 196; 39 of 64)."""
    return num_patches - default_remove_count(num_patches)


class _MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        out = x.shape[-1]
        x = nn.Dense(self.hidden, name="fc1", dtype=jnp.float32, param_dtype=jnp.float32)(x)
        x = jax.nn.gelu(x, approximate=False)
        return nn.Dense(out, name="fc2", dtype=jnp.float32, param_dtype=jnp.float32)(x)


class PatchPredictor(nn.Module):
    """Patch Ranking's predictor. As a registered scorer it is called with `StageInputs` and returns [B, C] fp32
    keep scores without gradient; `logits(patch_tokens)` is the same map, differentiable, for training.

    Constructed with no arguments: P and D come from its input (the token MLP is sized by P at init).
    """

    @nn.compact
    def logits(self, patch_tokens: jax.Array) -> jax.Array:
        """Patch tokens [B, P, D] (the tokens entering the prune layer, CLS and protected tokens removed) ->
        logits [B, P] in fp32 (higher = keep). Computed in fp32 whatever the tower's compute dtype."""
        x = pool_channels(patch_tokens.astype(jnp.float32))  # [B, P, 64]
        y = nn.LayerNorm(epsilon=MIXER_LN_EPS, name="token_norm")(x)
        x = x + _MLP(TOKEN_HIDDEN, name="token_mlp")(y.swapaxes(1, 2)).swapaxes(1, 2)
        x = x + _MLP(CHANNEL_HIDDEN, name="channel_mlp")(nn.LayerNorm(epsilon=MIXER_LN_EPS, name="channel_norm")(x))
        x = nn.LayerNorm(epsilon=MIXER_LN_EPS, name="head_norm")(x)
        return nn.Dense(1, name="score", dtype=jnp.float32, param_dtype=jnp.float32)(x)[..., 0]

    def __call__(self, inputs: StageInputs) -> jax.Array:
        patches = inputs.x[:, 1:1 + inputs.num_candidates]  # never CLS, never the protected tail
        return jax.lax.stop_gradient(self.logits(patches))


def predictor_flops(num_patches: int, width: int) -> int:
    """FLOPs of one predictor forward on P patches of width D (see FLOPS_FORMULA)."""
    p, c = num_patches, POOLED_CHANNELS
    return p * width + 4 * p * TOKEN_HIDDEN * c + 4 * p * c * CHANNEL_HIDDEN + 2 * p * c


def predictor_parameter_count(num_patches: int) -> int:
    """The predictor's parameters for P patches, from the architecture (tests check it against Flax's)."""
    c = POOLED_CHANNELS
    norms = 3 * 2 * c
    token = num_patches * TOKEN_HIDDEN + TOKEN_HIDDEN + TOKEN_HIDDEN * num_patches + num_patches
    channel = c * CHANNEL_HIDDEN + CHANNEL_HIDDEN + CHANNEL_HIDDEN * c + c
    return norms + token + channel + c + 1


def _scoring_flops(schedule, width: int, heads: Optional[int] = None, mlp_ratio: float = 4.0) -> list:
    # the stage's candidates are the patches (one stage, nothing merged before it)
    return [predictor_flops(schedule.candidates(stage), width) for stage in schedule.active_stages()]


def _defaults(num_patches: int, depth: int) -> dict:
    return {"begin_layers": (default_prune_layer(depth),), "keep": (default_keep(num_patches),)}


PATCH_RANKING = registry.register(registry.ReductionMethod(
    name="patch_ranking", summary="Patch Ranking: a learned predictor drops 40 % of the patches once, before block "
                                  "3 of 12 (inference)",
    trigger=registry.ALWAYS, placement=registry.BETWEEN_BLOCKS, removal=registry.DROP,
    default_options=_defaults, scoring_flops=_scoring_flops, flops_formula=FLOPS_FORMULA,
    scorer=PatchPredictor, serves_at_inference=True, max_stages=1))
