"""ToMe, token merging inside every block (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023).

Implemented from the paper and docs/other_methods.md, not from the authors' code (which is licensed for
non-commercial use only). In a block: `x = x + attn(ln_1(x))`, merge `r` tokens by bipartite soft matching on
that attention's keys, then `x = x + mlp(ln_2(x))`. Every token carries a size (how many input tokens it holds);
merges are size-weighted averages and every later attention adds log(size) of each key to its logits
(proportional attention), so a merged token counts as the tokens it holds.

Positions. A sequence of T tokens is laid out as [CLS, M mergeable tokens, `protected` trailing tokens] (the
trailing ones are learnable tokens that are never merged); "position" is the index in the current sequence,
CLS at 0. Set A holds the mergeable tokens at even positions (2, 4, ...), set B those at odd positions
(1, 3, ...): the paper's alternating split, in which CLS (position 0) would fall in A with an edge of -inf. Here
CLS and the protected tokens are left out of both sets (the shapes are static, so no -inf is needed): they
never merge and never receive a merge. |A| = M // 2, |B| = M - M // 2, and `r` is clamped to M // 2, so at
most half of the mergeable tokens merge.

Order after a merge: [CLS, the unmerged A tokens in ascending position, the B tokens in ascending position,
the protected tokens]; so CLS stays first and the protected tokens stay last. r = 0 changes nothing, order
included.

Everything is per example with static shapes: a stable sort ranks the edges (ties to the lower position, as
`ops.rank_candidates`, and never lax.top_k, which makes XLA's SPMD partitioner gather the batch), argmax picks
each A token's partner (ties to the lower position), and a per-example scatter-add merges. Sharding the batch
therefore adds no communication. No gradient flows through the similarities; it flows through the merged and
the kept tokens.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import struct

from elip_jax.reduction.ops import rank_candidates

NORM_EPS = 1e-12  # keys of norm 0 (never seen in practice) get similarity 0 instead of NaN

FLOPS_FORMULA = ("per block that merges r > 0 of N tokens (M = N - 1 - protected mergeable, nA = M // 2, "
                 "nB = M - nA, dk = D / heads): head-averaged keys N*D, normalisation 3*M*dk, similarity "
                 "2*nA*nB*dk (~ (N/2)^2 * 2*dk), size-weighted merge 2*(r + nB)*D; 0 when r = 0. Proportional "
                 "attention's bias add (N^2 * heads) is not counted (no matrix product).")


class Matching(struct.PyTreeNode):
    """One bipartite soft matching, per example. Positions are indices in the sequence that was matched.

    kept:   [B, nA - r] positions of the A tokens that stay, ascending.
    merged: [B, r] positions of the A tokens that merge, most similar edge first.
    into:   [B, r] for each merged A token, the index j of the B token it merges into (position 2j + 1).
    """

    kept: jax.Array
    merged: jax.Array
    into: jax.Array
    protected: int = struct.field(pytree_node=False, default=0)

    @property
    def r(self) -> int:
        return self.merged.shape[1]


def mergeable_count(num_tokens: int, protected: int = 0) -> int:
    """M, the tokens that may merge: all but CLS and the `protected` trailing tokens."""
    if not isinstance(protected, int) or protected < 0:
        raise ValueError(f"protected must be a non-negative int (trailing tokens never merged); got {protected!r}")
    if not isinstance(num_tokens, int) or num_tokens < 1 + protected:
        raise ValueError(f"num_tokens must be an int >= 1 + protected = {1 + protected} (CLS and the protected "
                         f"tokens); got {num_tokens!r}")
    return num_tokens - 1 - protected


def clamp_r(r: int, num_tokens: int, protected: int = 0) -> int:
    """r limited to M // 2 (at most half of the mergeable tokens merge, as many as there are A tokens)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r (tokens merged in a block) must be a non-negative Python int; got {r!r}")
    return min(r, mergeable_count(num_tokens, protected) // 2)


def bipartite_soft_matching(keys: jax.Array, r: int, protected: int = 0) -> Matching:
    """Match r A tokens to B tokens from keys [B, T, dk] (head-averaged; normalised here, no gradient).

    Each A token's edge goes to its most similar B token (cosine similarity; ties to the lower position); the
    r A tokens with the most similar edges merge (ties to the lower position). r is clamped (`clamp_r`).
    """
    batch, num_tokens, _ = keys.shape
    r = clamp_r(r, num_tokens, protected)
    m = mergeable_count(num_tokens, protected)
    num_a = m // 2
    if r == 0:
        kept = jnp.broadcast_to(jnp.arange(2, m + 1, 2, dtype=jnp.int32), (batch, num_a))
        empty = jnp.zeros((batch, 0), jnp.int32)
        return Matching(kept=kept, merged=empty, into=empty, protected=protected)
    keys = jax.lax.stop_gradient(keys.astype(jnp.float32))
    keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), NORM_EPS)
    a, b = keys[:, 2:m + 1:2], keys[:, 1:m + 1:2]
    # HIGHEST: the decisions should not depend on a backend's default reduced-precision fp32 matmul
    similarity = jnp.einsum("bid,bjd->bij", a, b, precision=jax.lax.Precision.HIGHEST)
    edge = similarity.max(axis=-1)
    partner = jnp.argmax(similarity, axis=-1).astype(jnp.int32)  # the first maximum: lower position on ties
    ranked = rank_candidates(edge).astype(jnp.int32)  # stable: ties to the lower position
    merged_a, kept_a = ranked[:, :r], jnp.sort(ranked[:, r:], axis=-1)
    return Matching(kept=2 + 2 * kept_a, merged=2 + 2 * merged_a,
                    into=jnp.take_along_axis(partner, merged_a, axis=1), protected=protected)


def _scatter_add(base: jax.Array, index: jax.Array, values: jax.Array) -> jax.Array:
    """base[b, index[b, i]] += values[b, i], per example (a scatter with a batch dimension: no communication)."""
    return jax.vmap(lambda z, i, v: z.at[i].add(v, mode="promise_in_bounds"))(base, index, values)


def _gather(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[b, index[b, i]] for values [B, T, ...] and index [B, K] -> [B, K, ...]. The indices come from
    the matching and are in range by construction, so no bounds handling is compiled in."""
    index = index.reshape(index.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1, mode="promise_in_bounds")


def _assemble(x: jax.Array, matching: Matching, b_tokens: jax.Array) -> jax.Array:
    """[CLS, unmerged A, the given B tokens, protected] from x [B, T, ...]."""
    tail = x[:, x.shape[1] - matching.protected:]
    return jnp.concatenate([x[:, :1], _gather(x, matching.kept), b_tokens, tail], axis=1)


def _b_slice(x: jax.Array, protected: int) -> jax.Array:
    m = mergeable_count(x.shape[1], protected)
    return x[:, 1:m + 1:2]


def merge_tokens(x: jax.Array, sizes: jax.Array, matching: Matching):
    """Size-weighted merge of x [B, T, D] with sizes [B, T] (fp32): (x [B, T - r, D], sizes [B, T - r]).

    A B token that receives A tokens becomes sum(s * x) / sum(s) over itself and them, computed in fp32, and
    its size the sum of theirs; every other token is carried over bit for bit. r = 0 returns x and sizes.
    """
    if matching.r == 0:
        return x, sizes
    sizes = sizes.astype(jnp.float32)
    x_b, s_b = _b_slice(x, matching.protected), _b_slice(sizes, matching.protected)
    s_a = _gather(sizes, matching.merged)
    x_a = _gather(x, matching.merged).astype(jnp.float32)
    received = _scatter_add(jnp.zeros_like(s_b), matching.into, s_a)
    weighted = _scatter_add(jnp.zeros(x_b.shape, jnp.float32), matching.into, s_a[..., None] * x_a)
    total = s_b + received
    averaged = ((s_b[..., None] * x_b.astype(jnp.float32) + weighted) / total[..., None]).astype(x.dtype)
    new_b = jnp.where((received > 0)[..., None], averaged, x_b)
    return _assemble(x, matching, new_b), _assemble(sizes, matching, total)


def merge_sum(values: jax.Array, matching: Matching) -> jax.Array:
    """Merge by plain sums: values [B, T, ...] -> [B, T - r, ...], each B token plus the A tokens merged into it.

    For quantities that add up, such as sizes or a source map (`initial_sources`) recording which input tokens
    each token holds (for pictures of the merges).
    """
    if matching.r == 0:
        return values
    merged = _gather(values, matching.merged)
    return _assemble(values, matching, _scatter_add(_b_slice(values, matching.protected), matching.into, merged))


def initial_sources(batch: int, num_tokens: int, dtype=jnp.float32) -> jax.Array:
    """[B, T, T] identity: input token t is held by token t. Follow the merges with `merge_sum`."""
    return jnp.broadcast_to(jnp.eye(num_tokens, dtype=dtype), (batch, num_tokens, num_tokens))


def size_bias(sizes: Optional[jax.Array]) -> Optional[jax.Array]:
    """Proportional attention's per-key logit bias log(sizes) [B, T] (fp32); None for all-one sizes."""
    return None if sizes is None else jnp.log(sizes.astype(jnp.float32))


def tome_block(block: Any, x: jax.Array, sizes: Optional[jax.Array], r: int, protected: int = 0,
               proportional: bool = True):
    """One block with ToMe: x + attn(ln_1(x)) (proportional), merge r tokens on its keys, x + mlp(ln_2(x)).

    block: a bound `ResidualBlock` (anything with `attend(x, key_bias=...) -> (x, keys)` and `feed_forward`).
    sizes: [B, T] fp32 token sizes, or None for all ones (before the first merge: plain attention, bit for bit).
    r: Python int, clamped to half of the mergeable tokens. Returns (x, sizes, matching): sizes stays None and
    matching is None while nothing has merged; with r = 0 the block is exactly the plain block.
    """
    x, keys = block.attend(x, key_bias=size_bias(sizes) if proportional else None)
    r = clamp_r(r, x.shape[1], protected)
    matching = None
    if r > 0:
        matching = bipartite_soft_matching(keys, r, protected)
        if sizes is None:
            sizes = jnp.ones(x.shape[:2], jnp.float32)
        x, sizes = merge_tokens(x, sizes, matching)
    return block.feed_forward(x), sizes, matching


def tome_blocks(blocks: Sequence[Any], x: jax.Array, r_per_block: Sequence[int], protected: int = 0,
                proportional: bool = True):
    """`tome_block` over a sequence of blocks: (x, sizes or None, the list of matchings, None where r = 0)."""
    if len(r_per_block) != len(blocks):
        raise ValueError(f"r_per_block needs one r per block: {len(blocks)} blocks, got {len(r_per_block)} values")
    sizes, matchings = None, []
    for block, r in zip(blocks, r_per_block):
        x, sizes, matching = tome_block(block, x, sizes, r, protected, proportional)
        matchings.append(matching)
    return x, sizes, matchings


class ToMeSchedule(NamedTuple):
    """r: tokens merged in each block (clamped); tokens: tokens entering each block."""

    r: tuple
    tokens: tuple

    @property
    def final_tokens(self) -> int:
        return self.tokens[-1] - self.r[-1]


def tome_schedule(num_tokens: int, depth: int, r: Union[int, Sequence[int]], protected: int = 0,
                  decreasing: bool = False) -> ToMeSchedule:
    """The per-block r and the tokens entering each block, for `depth` blocks and `num_tokens` input tokens
    (CLS + patches + protected).

    r: one int for every block, or one int per block. decreasing (with an int r): r falls linearly from 2r in
    the first block to 0 in the last, r_i = floor(2r (depth-1-i) / (depth-1) + 1/2), about r * depth in total
    before clamping. Every r_i is clamped to half of the mergeable tokens entering its block.
    """
    mergeable_count(num_tokens, protected)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int; got {depth!r}")
    if isinstance(r, int) and not isinstance(r, bool):
        clamp_r(r, num_tokens, protected)  # validates
        if decreasing and depth > 1:
            wanted = [int(2 * r * (depth - 1 - i) / (depth - 1) + 0.5) for i in range(depth)]
        else:
            wanted = [r] * depth
    else:
        if decreasing:
            raise ValueError("decreasing=True needs a single int r (it derives the per-block values)")
        wanted = list(r)
        if len(wanted) != depth:
            raise ValueError(f"r needs one value per block: depth {depth}, got {len(wanted)} values {wanted}")
    rs, tokens, n = [], [], num_tokens
    for value in wanted:
        tokens.append(n)
        rs.append(clamp_r(value, n, protected))
        n -= rs[-1]
    return ToMeSchedule(tuple(rs), tuple(tokens))


def tome_scoring_flops(tokens: int, r: int, width: int, heads: int, protected: int = 0) -> int:
    """FLOPs ToMe adds to one block entering with `tokens` tokens and merging r (see FLOPS_FORMULA)."""
    r = clamp_r(r, tokens, protected)
    if r == 0:
        return 0
    m = mergeable_count(tokens, protected)
    num_a, num_b, dk = m // 2, m - m // 2, width // heads
    return tokens * width + 3 * m * dk + 2 * num_a * num_b * dk + 2 * (r + num_b) * width


def tome_scoring_flops_per_block(schedule: ToMeSchedule, width: int, heads: int, protected: int = 0) -> list:
    return [tome_scoring_flops(n, r, width, heads, protected) for n, r in zip(schedule.tokens, schedule.r)]


# ---------------------------------------------------------------------------------------------- registration

# r for ViT-B/16 at 224 px (196 patches, 12 blocks): r = 9 in every block puts the image forward at about the
# FLOPs of EViT's default schedule (0.72 of `none`; BENCHMARKS.md). Other towers scale it with the patch count
# and the depth: r = round(9 * (P / 196) * (12 / depth)), at least 1.
DEFAULT_R_VIT_B16 = 9


def default_r(num_patches: int, depth: int) -> int:
    return max(1, int(DEFAULT_R_VIT_B16 * num_patches * 12 / (196 * depth) + 0.5))


def _defaults(num_patches: int, depth: int) -> dict:
    return {"r": default_r(num_patches, depth)}


def _scoring_flops(schedule, width: int, heads: Optional[int] = None, mlp_ratio: float = 4.0) -> list:
    if not heads:
        raise ValueError("ToMe's scoring FLOPs need the number of attention heads (heads=)")
    per_block = ToMeSchedule(tuple(schedule.r), tuple(schedule.tokens_per_block()))
    return tome_scoring_flops_per_block(per_block, width, heads, schedule.protected)


def _register():
    from elip_jax.reduction import registry

    return registry.register(registry.ReductionMethod(
        name="tome", summary="token merging inside every block by bipartite soft matching (training and inference)",
        trigger=registry.ALWAYS, placement=registry.INSIDE_BLOCKS, removal=registry.MERGE_PAIRS,
        default_options=_defaults, scoring_flops=_scoring_flops, flops_formula=FLOPS_FORMULA,
        serves_at_inference=True, first_valid_block=0, sweep_parameter=registry.SWEEP_R))


TOME = _register()
