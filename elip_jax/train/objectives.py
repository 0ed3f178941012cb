"""What a training run optimises: the batch it reads and the loss of one batch, as one object the shell asks.

The trainer's shell (setup.py, loop.py: checkpoints, resume, metrics, progress, evaluators) is the same for every
objective. An objective says:

    batch_spec(model, batch_size) -> {name: jax.ShapeDtypeStruct}   the global batch the step is compiled for
    loss_fn(model, loss) -> fn(params, batch, rng) -> scalar      the loss of a (micro-)batch, raw batch in
    open_data(config, plan) -> (data_config, iterator) or None   None: the trainer's image-text pipeline
    build_evaluators(config, plan, data_config) -> list or None  None: config.evals / config.eval

CLIP_PAIRS is contrastive pre-training on image-text pairs, the default. Another objective (Patch Ranking's
predictor, trained on images and golden rankings: elip_jax.patch_ranking.train_predictor) is passed to
`train(config, workdir, objective=...)`; the trainer never imports it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from elip_jax.data import normalize_images
from elip_jax.train.losses import Loss


class Objective:
    """The interface; `ClipPairs` is the default implementation."""

    name = "objective"

    def batch_spec(self, model, batch_size: int) -> dict:
        raise NotImplementedError

    def loss_fn(self, model, loss: Loss):
        raise NotImplementedError

    def open_data(self, config, plan):
        return None

    def build_evaluators(self, config, plan, data_config):
        return None


class ClipPairs(Objective):
    """Contrastive pre-training: batch {'images': uint8 [B, S, S, 3], 'tokens': int32 [B, L]}; the text tower
    runs first and guides the image tower; the registered loss over the global batch."""

    name = "clip_pairs"

    def batch_spec(self, model, batch_size: int) -> dict:
        c = model.config
        return {"images": jax.ShapeDtypeStruct((batch_size, c.image_size, c.image_size, 3), jnp.uint8),
                "tokens": jax.ShapeDtypeStruct((batch_size, c.context_length), jnp.int32)}

    def loss_fn(self, model, loss: Loss):
        def fn(params, batch, rng):
            images = normalize_images(batch["images"]).astype(model.config.compute_dtype)
            image_features, text_features, logit_scale = model.apply({"params": params}, images, batch["tokens"],
                                                                     rng=rng)
            return loss(params, image_features, text_features, logit_scale)
        return fn


CLIP_PAIRS = ClipPairs()
