"""Contrastive losses over the global batch, computed in fp32, and their registry.

A registered `Loss` carries what the trainer must decide with it: the initial logit scale (and bias, for a
loss that learns one), so that the set-up asks the registry once and nothing else names a loss.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

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


@dataclasses.dataclass(frozen=True)
class Loss:
    """A contrastive loss and the initialisation it expects of the model's logit scale (and bias)."""
    name: str
    fn: Callable
    init_logit_scale: float
    init_logit_bias: Optional[float] = None  # not None: the loss learns a bias (the model gets a logit_bias)

    @property
    def learns_bias(self) -> bool:
        return self.init_logit_bias is not None

    def model_overrides(self) -> dict:
        """CLIPConfig fields that give a freshly initialised model this loss's initialisation."""
        return dict(init_logit_scale=self.init_logit_scale, init_logit_bias=self.init_logit_bias)

    def __call__(self, params, image_features, text_features, logit_scale):
        if self.learns_bias:
            return self.fn(image_features, text_features, logit_scale, params["logit_bias"])
        return self.fn(image_features, text_features, logit_scale)


# CLIP: temperature 0.07 (Radford et al.); SigLIP: scale 10 and bias -10 (Zhai et al., section 3.3)
LOSSES = {
    "clip": Loss("clip", clip_loss, init_logit_scale=math.log(1 / 0.07)),
    "siglip": Loss("siglip", siglip_loss, init_logit_scale=math.log(10.0), init_logit_bias=-10.0),
}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {sorted(LOSSES)}")
    return LOSSES[name]
