"""The two-tower CLIP model and `create_model`."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from elip_jax.models.config import CLIPConfig, get_config, resolve_dtype
from elip_jax.models.towers import TextTransformer, VisionTransformer
from elip_jax.reduction import ReductionSchedule, make_schedule
from elip_jax.reduction.methods import is_key_batch


def l2_normalize(x, axis=-1):
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


class CLIP(nn.Module):
    """CLIP with text-guided token reduction in the vision tower.

    Parameters are fp32; `config.dtype` sets the compute dtype. Features come back in fp32.
    """

    config: CLIPConfig
    reduction: ReductionSchedule = ReductionSchedule()

    def setup(self):
        self.visual = VisionTransformer(self.config, self.reduction)
        self.text = TextTransformer(self.config)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.config.init_logit_scale), ())
        if self.config.init_logit_bias is not None:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.config.init_logit_bias), ())

    def encode_image(self, images, guide: Optional[jax.Array] = None, rng: Optional[jax.Array] = None,
                     normalize: bool = False):
        """images [B, H, W, 3] float, CLIP-normalised -> [B, E].

        guide: paired text features [B, E] for text-guided pruning (training); without it ELIP does not
        prune. rng: for `random` masking, one key for the batch (training) or one key per image (evaluation,
        `elip_jax.reduction.methods.example_keys`); without it `random` does not prune.
        """
        check_images(images, self.config)
        if guide is not None:
            check_guide(guide, images.shape[0], self.config)
        if rng is not None:
            check_rng(rng, images.shape[0])
        features = self.visual(images, guide, rng)
        return l2_normalize(features) if normalize else features

    def encode_text(self, tokens, normalize: bool = False):
        """tokens [B, L] int ids (L <= context_length), as from `elip_jax.tokenize` -> [B, E]."""
        check_tokens(tokens, self.config)
        features = self.text(tokens)
        return l2_normalize(features) if normalize else features

    def __call__(self, images, tokens, rng: Optional[jax.Array] = None):
        """The training forward: the text tower runs first and guides the image tower.

        Returns (image_features, text_features, logit_scale): features L2-normalised, logit_scale = exp(param).
        """
        text_features = self.encode_text(tokens, normalize=True)
        guide = jax.lax.stop_gradient(text_features) if self.reduction.text_guided else None
        image_features = self.encode_image(images, guide=guide, rng=rng, normalize=True)
        return image_features, text_features, jnp.exp(self.logit_scale)


def check_images(images, config: CLIPConfig):
    expected = (config.image_size, config.image_size, 3)
    if not hasattr(images, "shape") or len(images.shape) != 4 or tuple(images.shape[1:]) != expected:
        shape = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"images must be an array of shape [batch, {expected[0]}, {expected[1]}, 3] "
                         f"(NHWC, CLIP-normalised); got {shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point, already normalised with the CLIP mean/std; got "
                         f"dtype {images.dtype} (convert uint8 with elip_jax.data.normalize_images)")


def check_guide(guide, batch: int, config: CLIPConfig):
    if not hasattr(guide, "shape") or tuple(guide.shape) != (batch, config.embed_dim):
        raise ValueError(f"guide must be text features of shape [{batch}, {config.embed_dim}]; "
                         f"got {getattr(guide, 'shape', type(guide).__name__)}")


def check_rng(rng, batch: int):
    if is_key_batch(rng) and rng.shape[0] != batch:
        raise ValueError(f"rng must be one key, or one key per image ({batch}); got {rng.shape[0]} keys")


def check_tokens(tokens, config: CLIPConfig):
    if not hasattr(tokens, "shape") or len(tokens.shape) != 2:
        raise ValueError(f"tokens must be an int array of shape [batch, <= {config.context_length}] "
                         f"(from elip_jax.tokenize); got {getattr(tokens, 'shape', type(tokens).__name__)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must have an integer dtype; got {tokens.dtype}")
    if not 1 <= tokens.shape[1] <= config.context_length:
        raise ValueError(f"tokens must have 1 to {config.context_length} positions; got {tokens.shape[1]}")
    if not isinstance(tokens, jax.core.Tracer):  # values can be checked only outside jit
        values = np.asarray(tokens)
        if values.size and (values.min() < 0 or values.max() >= config.vocab_size):
            raise ValueError(f"token ids must be in [0, {config.vocab_size}); got values in "
                             f"[{values.min()}, {values.max()}]")


def create_model(name: str, reduction: Optional[ReductionSchedule | str | dict] = None, **overrides) -> CLIP:
    """A CLIP module for the named architecture.

    overrides: any `CLIPConfig` field (image_size=256, dtype='bfloat16' or jnp.bfloat16, remat=True, ...).
    reduction: a `ReductionSchedule`, a registered method name (`elip_jax.reduction.registered_methods()`:
    'none', 'elip', 'elip_inline', 'evit', 'random', 'tome', ...) with the default schedule for this tower, or a
    dict of `make_schedule` arguments (method, begin_layers, keep_ratios or keep, r, protected, mix, merge).
    """
    if "dtype" in overrides:
        overrides["dtype"] = resolve_dtype(overrides["dtype"])
    config = get_config(name, **overrides)
    return CLIP(config, schedule_for(config, reduction))


def keeping_tokens(reduction, current: Optional[ReductionSchedule]):
    """`reduction` (a name, a dict, a schedule or None) for a model whose schedule is now `current`, keeping its
    learnable visual tokens: they belong to the weights, not to the method, so switching methods (evaluating a
    tuned folder with tome, a sweep) keeps their count unless the new options name their own `protected`.
    A ReductionSchedule is taken as given; None stays None (the saved schedule)."""
    if reduction is None or isinstance(reduction, ReductionSchedule) or current is None or not current.protected:
        return reduction
    options = {"method": reduction} if isinstance(reduction, str) else dict(reduction)
    options.setdefault("protected", current.protected)
    return options


def schedule_for(config: CLIPConfig, reduction) -> ReductionSchedule:
    """Turns a method name, a dict of schedule options or a schedule into a schedule for this tower."""
    if reduction is None:
        reduction = "none"
    if isinstance(reduction, str):
        reduction = {"method": reduction}
    if isinstance(reduction, ReductionSchedule):
        if (reduction.num_patches, reduction.depth) != (config.num_patches, config.vision_layers):
            raise ValueError(f"schedule was made for {reduction.num_patches} patches and {reduction.depth} "
                             f"blocks; this model has {config.num_patches} and {config.vision_layers}")
        return reduction
    if not isinstance(reduction, dict):
        raise ValueError(f"reduction must be a method name, a dict or a ReductionSchedule; got {reduction!r}")
    return make_schedule(num_patches=config.num_patches, depth=config.vision_layers, **dict(reduction))
