"""The predictor's training objective and its metric (docs/patch_ranking.md#the-predictor).

Target: for each image, uniform over the patches the golden search kept and ~0 (TARGET_FLOOR before normalising)
on the ones it removed. Loss: KL(target || softmax(logits)) over the patches, averaged over images. Metric (the
paper's): the overlap of the predicted and the golden bottom-k, |predicted k lowest ∩ golden k removed| / k.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TARGET_FLOOR = 1e-6  # the target's weight on a golden-removed patch before normalising (a KL needs no zeros)


def ranking_targets(removed_mask) -> jax.Array:
    """[B, P] target distribution from the golden-removed patches (bool [B, P])."""
    weights = jnp.where(removed_mask, TARGET_FLOOR, 1.0).astype(jnp.float32)
    return weights / weights.sum(axis=-1, keepdims=True)


def kl_to_golden(logits, removed_mask) -> jax.Array:
    """Mean over images of KL(target || softmax(logits)); logits [B, P], removed_mask bool [B, P]."""
    target = ranking_targets(removed_mask)
    log_predicted = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(target * (jnp.log(target) - log_predicted), axis=-1))


def bottom_k_overlap(logits, removed_mask) -> np.ndarray:
    """Per image, the fraction of the golden-removed patches (k of them) among the k lowest predicted logits
    (ties to the lower index). logits [B, P], removed_mask bool [B, P] -> float [B]."""
    logits, removed_mask = np.asarray(logits, np.float64), np.asarray(removed_mask, bool)
    k = removed_mask.sum(axis=-1)
    order = np.argsort(logits, axis=-1, kind="stable")  # lowest first: what the predictor would remove
    overlap = np.empty(len(logits))
    for b in range(len(logits)):
        overlap[b] = removed_mask[b, order[b, :k[b]]].sum() / max(k[b], 1)
    return overlap
