"""Static-shape token selection and merging.

All operations are per example (batched gathers and weighted sums along the token axis), so with the batch
sharded over devices they need no cross-device communication.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MERGE_EPS = 1e-6


def rank_candidates(scores: jax.Array) -> jax.Array:
    """Candidate indices [B, C] from the highest score down; ties go to the lower index.

    A stable sort rather than lax.top_k: XLA's SPMD partitioner splits a sort along the batch axis but
    gathers the whole batch onto every device for TopK, which would make selection communicate.
    """
    return jnp.argsort(-scores, axis=-1, stable=True)


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x[b, idx[b, j]] for x [B, N, D] and idx [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(x, idx[..., None], axis=1)


def merge_tokens(candidates: jax.Array, scores: jax.Array, pruned_idx: jax.Array) -> jax.Array:
    """Score-weighted sum of the pruned candidates: [B, 1, D].

    Weights are a_pruned / (sum(a_pruned) + 1e-6), constants (no gradient through scores; docs/elip.md, step 5).
    """
    weights = jax.lax.stop_gradient(jnp.take_along_axis(scores, pruned_idx, axis=1))
    weights = weights / (weights.sum(axis=-1, keepdims=True) + MERGE_EPS)
    merged = jnp.einsum("bn,bnd->bd", weights.astype(candidates.dtype), gather_tokens(candidates, pruned_idx))
    return merged[:, None, :]


def prune_tokens(x: jax.Array, scores: jax.Array, keep: int, merge: bool, protected: int = 0):
    """[CLS, kept candidates in original order, (merged), protected] from x [B, 1 + C + protected, D] and
    scores [B, C]: the merged token sits last among the candidates, before the `protected` trailing tokens,
    which (like CLS) are carried over unchanged.

    Returns the new sequence and the kept candidate indices [B, keep] (positions within x[:, 1:]).
    """
    scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
    end = x.shape[1] - protected
    candidates = x[:, 1:end]
    ranked = rank_candidates(scores)
    kept_idx = jnp.sort(ranked[:, :keep], axis=-1)
    parts = [x[:, :1], gather_tokens(candidates, kept_idx)]
    if merge:
        parts.append(merge_tokens(candidates, scores, ranked[:, keep:]))
    if protected:
        parts.append(x[:, end:])
    return jnp.concatenate(parts, axis=1), kept_idx
