"""Bad-data handling: turn whatever a record holds into an RGB uint8 image and a list of caption strings, or say
why it cannot be used.

Web-scale image-text data is dirty. The rule here: convert what has a sensible conversion (any colour mode to
RGB, 16-bit to 8-bit, tiny images are upscaled by the later resize), skip the rest with a named reason, and
never raise: a training run must not die or stall on one bad record. Reasons are counted and reported.
"""
import io
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# Why an example was skipped. The order is fixed: counts travel as an int array indexed by these.
SKIP_REASONS = (
    "unreadable_record",   # the record itself could not be read or deserialised
    "undecodable_image",   # not an image, truncated, or an unsupported format
    "bad_image_shape",     # decoded, but not a 2-D image with 1, 2, 3 or 4 channels
    "image_too_small",     # a side shorter than data_config.min_image_size
    "missing_caption",     # the caption feature is absent, or holds no strings at all
    "empty_caption",       # only empty or whitespace captions
)
# What was converted instead of skipped (reported too: a high count hints at a mis-configured dataset).
CONVERSIONS = ("converted_to_rgb", "reduced_bit_depth", "truncated_caption")

# Decompression-bomb guard: a record claiming more pixels than this is treated as undecodable.
_MAX_PIXELS = 8192 * 8192


def counts_to_dict(names: Sequence[str], counts) -> dict:
    return {name: int(count) for name, count in zip(names, counts)}


def _to_8bit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if array.dtype in (np.int32, np.uint32, np.int64):  # PIL's 'I' mode: treat as 16-bit data, as PNG stores it
        return (np.clip(array, 0, 65535) >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):  # floats are taken as [0, 1] intensities
        return (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    raise TypeError(f"unsupported pixel dtype {array.dtype}")


def _array_to_rgb(array: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[str], List[str]]:
    """An already decoded pixel array (a non-Image feature, or a PIL high-bit-depth image) -> RGB uint8."""
    conversions = []
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        return None, "bad_image_shape", conversions
    if array.dtype != np.uint8:
        try:
            array = _to_8bit(array)
        except TypeError:
            return None, "bad_image_shape", conversions
        conversions.append("reduced_bit_depth")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
        conversions.append("converted_to_rgb")
    elif array.shape[-1] == 2:  # grey + alpha: drop alpha, as PIL's convert('RGB') does
        array = np.repeat(array[..., :1], 3, axis=-1)
        conversions.append("converted_to_rgb")
    elif array.shape[-1] == 4:
        array = array[..., :3]
        conversions.append("converted_to_rgb")
    return np.ascontiguousarray(array), None, conversions


def decode_image(value: Any, min_image_size: int) -> Tuple[Optional[np.ndarray], Optional[str], List[str]]:
    """(RGB uint8 [H, W, 3] or None, skip reason or None, conversions applied).

    `value` is encoded image bytes (what tfds.decode.SkipDecoding returns for an Image feature) or a pixel array.
    """
    conversions: List[str] = []
    if isinstance(value, np.ndarray) and value.dtype != object:
        image, reason, conversions = _array_to_rgb(value)
    else:
        if isinstance(value, np.ndarray):  # a 0-d object array holding bytes
            value = value.item()
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
            return None, "undecodable_image", conversions
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(value)) as pil:
                    if pil.width * pil.height > _MAX_PIXELS:
                        return None, "undecodable_image", conversions
                    pil.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES is left off)
                    if pil.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                        # PIL cannot convert these to RGB without clipping to 0..255; scale them ourselves.
                        image, reason, conversions = _array_to_rgb(np.asarray(pil))
                    elif pil.mode == "RGB":
                        image, reason = np.asarray(pil), None
                    else:  # L, LA, P, PA, RGBA, CMYK, YCbCr, LAB, HSV, 1: PIL knows the colour conversion
                        image, reason = np.asarray(pil.convert("RGB")), None
                        conversions.append("converted_to_rgb")
        except Exception:  # pylint: disable=broad-except  # PIL raises many types on corrupt data
            return None, "undecodable_image", conversions
    if image is None:
        return None, reason, conversions
    if image.shape[0] < 1 or image.shape[1] < 1 or min(image.shape[:2]) < min_image_size:
        return None, "image_too_small", conversions
    return image, None, conversions


def _as_text(value: Any) -> Optional[str]:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None  # numbers, None, nested structures: not a caption


def _get_path(record: Any, path: Sequence[str]) -> Any:
    """Follows 'captions/text': through dicts, and through lists of dicts (element-wise)."""
    value = record
    for key in path:
        if isinstance(value, dict):
            value = value[key]
        elif isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
            value = [v[key] for v in value]
        else:
            raise KeyError(key)
    return value


def extract_captions(record: Any, key_path: Sequence[str]) -> Tuple[List[str], Optional[str]]:
    """All non-empty caption strings under `key_path`, or ([], reason)."""
    try:
        value = _get_path(record, key_path)
    except (KeyError, TypeError, IndexError):
        return [], "missing_caption"
    if isinstance(value, np.ndarray) and value.ndim > 0:
        value = value.reshape(-1).tolist()
    candidates = value if isinstance(value, (list, tuple)) else [value]
    texts = [_as_text(v) for v in candidates]
    texts = [t for t in texts if t is not None]
    if not texts:
        return [], "missing_caption"
    texts = [" ".join(t.split()) for t in texts]  # collapse newlines and runs of spaces
    texts = [t for t in texts if t]
    if not texts:
        return [], "empty_caption"
    return texts, None
