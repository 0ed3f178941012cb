"""CLIP image preprocessing on the host, one path per mode, uint8 in and uint8 out (normalisation happens on
the device, see normalize.py).

train: random resized crop (torchvision RandomResizedCrop semantics, as open_clip's train transform uses it,
       scale (0.9, 1.0) by default) resized bicubically to S x S.
eval:  resize the shorter side to S (bicubic), then centre crop S x S (open_clip's / OpenAI's eval transform).
The train crop and resize are one PIL call (resize with a box), which avoids an intermediate copy.
"""
import math
from typing import Tuple

import numpy as np
from PIL import Image


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: Tuple[float, float], ratio: Tuple[float, float]) -> Tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop, as torchvision's RandomResizedCrop.get_params draws it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    # Fallback: the whole image clipped to the ratio range, centred (torchvision does the same).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def train_crop(image: np.ndarray, size: int, rng: np.random.Generator,
               scale: Tuple[float, float] = (0.9, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> uint8 [size, size, 3] by a random resized crop."""
    box = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box))


def eval_resize_crop(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> uint8 [size, size, 3]: shorter side to `size` (bicubic), centre crop."""
    height, width = image.shape[:2]
    factor = size / min(height, width)
    new_h, new_w = max(size, int(round(height * factor))), max(size, int(round(width * factor)))
    # Resize then crop, literally: matches the transform pre-trained CLIP weights were evaluated with.
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision CenterCrop
    return np.asarray(resized)[top:top + size, left:left + size]
