"""The between-block methods (`none`, `elip`, `elip_inline`, `evit`, `random`): their scorers and registrations.

Each scorer is a Flax module (these own no parameters; a learned scorer may) that returns [B, C] fp32 scores for
the candidates (CLS and protected tokens excluded; higher = keep) and never carries a gradient. Blocks are passed
in as callables (bound Flax submodules), so this package knows nothing of models.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from elip_jax.reduction import registry
from elip_jax.reduction.costs import block_flops, cls_row_flops
from elip_jax.reduction.schedule import (DEFAULT_KEEP_RATIOS, DEFAULT_RANDOM_KEEP_RATIO, ReductionSchedule,
                                         default_begin_layers)


@dataclasses.dataclass
class StageInputs:
    """What a scorer may look at before block `group[0]`.

    x: tokens [B, 1 + C + protected, D] at the stage input. group: the blocks of this stage, in order (for the
    look-ahead). guide: text guidance already mapped into the vision width [B, D], or None.
    previous_cls_attention: head-averaged CLS-row attention [B, T] of the previous main-path block.
    protected: how many trailing tokens are protected (not candidates). stage, keep: which stage, keeping how many.
    """

    x: jax.Array
    group: Sequence
    mix: float
    guide: Optional[jax.Array] = None
    previous_cls_attention: Optional[jax.Array] = None
    rng: Optional[jax.Array] = None
    protected: int = 0
    stage: int = 0
    keep: int = 0

    @property
    def num_candidates(self) -> int:
        return self.x.shape[1] - 1 - self.protected

    def candidate_scores(self, row: jax.Array) -> jax.Array:
        """The candidates' entries [B, C] of a per-token row [B, T] (drops CLS and the protected tokens)."""
        return row[:, 1:1 + self.num_candidates]


def mix_guide_into_cls(x: jax.Array, guide: jax.Array, mix: float) -> jax.Array:
    """A copy of x whose CLS is (1 - mix) * guide + mix * CLS (docs/elip.md, one stage, step 2)."""
    cls = (1.0 - mix) * guide.astype(x.dtype) + mix * x[:, 0]
    return x.at[:, 0].set(cls)


class ELIPScorer(nn.Module):
    """ELIP: look ahead through the stage's blocks with a text-mixed CLS, score by the CLS-row attention
    of the stage's last block. Only that row of the last block is computed: same decisions, less work."""

    def __call__(self, inputs: StageInputs) -> jax.Array:
        y = jax.lax.stop_gradient(mix_guide_into_cls(inputs.x, inputs.guide, inputs.mix))
        for block in inputs.group[:-1]:
            y = block(y)
        attention = inputs.group[-1].cls_attention(y)
        return jax.lax.stop_gradient(inputs.candidate_scores(attention))


class ELIPInlineScorer(nn.Module):
    """Text-guided without look-ahead: the stage's first block scores the current tokens, its CLS query
    taken from the text-mixed CLS. Costs one LayerNorm and one key projection of the tokens."""

    def __call__(self, inputs: StageInputs) -> jax.Array:
        y = jax.lax.stop_gradient(mix_guide_into_cls(inputs.x, inputs.guide, inputs.mix))
        return jax.lax.stop_gradient(inputs.candidate_scores(inputs.group[0].cls_attention(y)))


class EViTScorer(nn.Module):
    """EViT: the CLS-row attention the previous block of the main path already computed."""

    def __call__(self, inputs: StageInputs) -> jax.Array:
        return jax.lax.stop_gradient(inputs.candidate_scores(inputs.previous_cls_attention))


class RandomScorer(nn.Module):
    """FLIP: uniform scores, so the top-k is a uniformly random subset of the patches.

    rng: one key for the batch (training: the step's key), or one key per example (evaluation: `example_keys`),
    where each example's scores are drawn from its own key alone.
    """

    def __call__(self, inputs: StageInputs) -> jax.Array:
        if is_key_batch(inputs.rng):
            draw = lambda key: jax.random.uniform(key, (inputs.num_candidates,), jnp.float32)  # noqa: E731
            return jax.vmap(draw)(inputs.rng)
        return jax.random.uniform(inputs.rng, (inputs.x.shape[0], inputs.num_candidates), jnp.float32)


def is_key_batch(rng: jax.Array) -> bool:
    """Whether `rng` is a batch of keys ([B] typed keys, or [B, 2] raw uint32 keys) rather than one key."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return jnp.ndim(rng) == (1 if typed else 2)


def example_keys(seed, index: jax.Array) -> jax.Array:
    """Raw keys [B, 2]: fold_in(PRNGKey(seed), index[b]), so what an example draws at evaluation depends only on
    the seed and its index in the split. Padding rows (index -1) get example 0's key; their results are dropped."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.maximum(jnp.asarray(index, jnp.int32), 0))


# ---------------------------------------------------------------------------------------------- scoring costs

def tokens_before_stage(schedule: ReductionSchedule, stage: int) -> int:
    """Tokens in the sequence just before stage `stage` prunes (CLS and protected tokens included)."""
    begin = schedule.begin_layers[stage]
    return schedule.tokens_per_block()[begin - 1] if begin > 0 else schedule.input_tokens


def no_scoring_flops(schedule, width, heads=None, mlp_ratio=4.0) -> list:
    return [0 for _ in schedule.active_stages()]


def elip_scoring_flops(schedule, width, heads=None, mlp_ratio=4.0) -> list:
    costs = []
    for stage in schedule.active_stages():
        before = tokens_before_stage(schedule, stage)
        lookahead_blocks = schedule.group_end(stage) - schedule.begin_layers[stage] - 1
        costs.append(lookahead_blocks * block_flops(before, width, mlp_ratio) + cls_row_flops(before, width))
    return costs


def cls_row_scoring_flops(schedule, width, heads=None, mlp_ratio=4.0) -> list:
    return [cls_row_flops(tokens_before_stage(schedule, stage), width) for stage in schedule.active_stages()]


def elip_defaults(num_patches: int, depth: int) -> dict:
    return {"begin_layers": default_begin_layers(depth), "keep_ratios": DEFAULT_KEEP_RATIOS}


def random_defaults(num_patches: int, depth: int) -> dict:
    return {"begin_layers": (0,), "keep_ratios": (DEFAULT_RANDOM_KEEP_RATIO,)}


NONE = registry.register(registry.ReductionMethod(
    name="none", summary="the unpruned model", trigger=registry.NEVER, placement=registry.NOWHERE,
    removal=registry.KEEP_ALL, default_options=lambda num_patches, depth: {}, scoring_flops=no_scoring_flops,
    flops_formula="0", serves_at_inference=True, first_valid_block=0))

ELIP = registry.register(registry.ReductionMethod(
    name="elip", summary="text-guided pruning and merging with a look-ahead (pre-training)",
    trigger=registry.GUIDE, placement=registry.BETWEEN_BLOCKS, removal=registry.MERGE_ONE,
    default_options=elip_defaults, scoring_flops=elip_scoring_flops, scorer=ELIPScorer,
    flops_formula="per active stage before block i with group i..i+n-1 and N = tokens before pruning: "
                  "(n-1)*block(N) + cls_row(N)  (look-ahead, forward only)"))

ELIP_INLINE = registry.register(registry.ReductionMethod(
    name="elip_inline", summary="text-guided pruning and merging scored by the stage's own first block",
    trigger=registry.GUIDE, placement=registry.BETWEEN_BLOCKS, removal=registry.MERGE_ONE,
    default_options=elip_defaults, scoring_flops=cls_row_scoring_flops, scorer=ELIPInlineScorer,
    flops_formula="per active stage: cls_row(N) (text-mixed CLS query and keys of block i)"))

EVIT = registry.register(registry.ReductionMethod(
    name="evit", summary="pruning and merging by the image's own CLS attention (training and inference)",
    trigger=registry.ALWAYS, placement=registry.BETWEEN_BLOCKS, removal=registry.MERGE_ONE,
    default_options=elip_defaults, scoring_flops=cls_row_scoring_flops, scorer=EViTScorer,
    needs_previous_cls_attention=True, serves_at_inference=True,
    flops_formula="per active stage: cls_row(N) at block i-1 (this implementation recomputes the CLS row from "
                  "block i-1's LayerNorm output beside the fused attention)"))

RANDOM = registry.register(registry.ReductionMethod(
    name="random", summary="a uniformly random subset of the patches, once (FLIP masking before block 0 in "
                           "training; seeded per example at evaluation)",
    trigger=registry.RNG, placement=registry.BETWEEN_BLOCKS, removal=registry.DROP,
    default_options=random_defaults, scoring_flops=no_scoring_flops, scorer=RandomScorer, per_example_keys=True,
    first_valid_block=0, max_stages=1,
    flops_formula="0 (uniform random scores)"))
