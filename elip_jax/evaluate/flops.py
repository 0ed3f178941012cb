"""FLOPs of the image encoder per image, as XLA's cost analysis counts them for the compiled program."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from elip_jax.accounting import xla_flops


def image_flops_per_image(model, variables, batch: int = 1, seed: int = 0) -> Optional[float]:
    """XLA-counted FLOPs of `encode_image` on `batch` unsharded images, divided by `batch`, given what an
    evaluation gives it (`image_inputs`: per-example keys for `random`, so the pruned program is counted).

    Compiled from shapes only on the default device, so it costs no data and no device memory, and counts
    the whole program (one device, not one shard). None where the backend reports no cost analysis.
    """
    from elip_jax.evaluate.extract import image_inputs
    size = model.config.image_size
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), variables)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image, normalize=True,
                                              **image_inputs(model, seed, jnp.arange(batch))))
    flops = xla_flops(encode.lower(shapes, images).compile())
    return None if flops is None else flops / batch
