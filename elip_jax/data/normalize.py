"""Device-side image normalisation: images cross to the device as uint8 (4x less host->device traffic than
float32) and are turned into CLIP's normalised float32 input here, inside jit."""
import jax.numpy as jnp

# OpenAI CLIP's per-channel statistics (RGB); open_clip uses the same values for OpenAI weights.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 [..., H, W, 3] in 0..255 -> float32 (x / 255 - mean) / std; jnp only, so it traces under jit."""
    images = jnp.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"normalize_images expects RGB images [..., H, W, 3]; got shape {images.shape}")
    scale = jnp.asarray(std, jnp.float32) * 255.0
    offset = jnp.asarray(mean, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - offset) / scale
