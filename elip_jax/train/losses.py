"""Contrastive losses over the global batch, computed in fp32."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def clip_loss(image_features, text_features, logit_scale):
    """Symmetric softmax cross-entropy of CLIP. Features [B, E] L2-normalised; logit_scale = exp(param).

    With the batch sharded over devices, jit gathers the features for the [B, B] logits: the loss is over
    the global batch.
    """
    image_features = image_features.astype(jnp.float32)
    text_features = text_features.astype(jnp.float32)
    logits = logit_scale * image_features @ text_features.T
    labels = jnp.arange(logits.shape[0])
    image_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_loss = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return 0.5 * (image_loss + text_loss)


def siglip_loss(image_features, text_features, logit_scale, logit_bias):
    """Sigmoid loss of SigLIP: every pair is a binary decision, positives on the diagonal."""
    logits = logit_scale * image_features.astype(jnp.float32) @ text_features.astype(jnp.float32).T + logit_bias
    labels = 2.0 * jnp.eye(logits.shape[0]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}
