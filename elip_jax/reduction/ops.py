"""Static-shape token selection and merging.

All operations are per example (batched gathers and weighted sums along the token axis), so with the batch
sharded over devices they need no cross-device communication.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MERGE_EPS = 1e-6


def top_k_in_order(scores: jax.Array, k: int) -> jax.Array:
    """Indices [B, k] of the k highest scores, ascending by position. Ties go to the lower index."""
    _, idx = jax.lax.top_k(scores, k)
    return jnp.sort(idx, axis=-1)


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x[b, idx[b, j]] for x [B, N, D] and idx [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(x, idx[..., None], axis=1)


def merge_pruned(candidates: jax.Array, scores: jax.Array, kept_idx: jax.Array) -> jax.Array:
    """Score-weighted sum of the candidates NOT in kept_idx: [B, 1, D].

    Weights are a_pruned / (sum(a_pruned) + 1e-6), constants (no gradient through scores, spec 1.2 step 5).
    """
    pruned = jnp.ones(scores.shape, bool).at[jnp.arange(scores.shape[0])[:, None], kept_idx].set(False)
    weights = jnp.where(pruned, jax.lax.stop_gradient(scores), 0.0)
    weights = weights / (weights.sum(axis=-1, keepdims=True) + MERGE_EPS)
    merged = jnp.einsum("bn,bnd->bd", weights.astype(candidates.dtype), candidates)
    return merged[:, None, :]


def prune_tokens(x: jax.Array, scores: jax.Array, keep: int, merge: bool):
    """[CLS, kept candidates in original order, (merged)] from x [B, 1 + C, D] and scores [B, C].

    Returns the new sequence and the kept candidate indices [B, keep] (positions within x[:, 1:]).
    """
    scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
    candidates = x[:, 1:]
    kept_idx = top_k_in_order(scores, keep)
    parts = [x[:, :1], gather_tokens(candidates, kept_idx)]
    if merge:
        parts.append(merge_pruned(candidates, scores, kept_idx))
    return jnp.concatenate(parts, axis=1), kept_idx
