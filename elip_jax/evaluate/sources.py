"""Where evaluation data comes from: the eval iterator, captions and TFDS label names (via elip_jax.data).

The one place that knows dataset-specific keys for evaluation: COCO keeps its captions under
'captions/text'; other retrieval datasets name their caption feature with --text-key.
"""
from __future__ import annotations

from typing import Optional, Sequence

from jax.sharding import Mesh

from elip_jax.evaluate import sharding
from elip_jax.data.names import canonical_name
from elip_jax.evaluate.classnames import base_name

DEFAULT_TEXT_KEYS = {"coco_captions": "captions/text"}
FALLBACK_TEXT_KEY = "captions"  # the built-in dataset's feature (a sequence of texts)


def resolve_dataset(dataset: str, data_dir: Optional[str]) -> tuple[str, Optional[str]]:
    """(TFDS name, data directory): 'builtin' is the built-in dataset, which (in any config, such as
    'elip_shapes/small') lives in the folder it is prepared in; other datasets keep their data_dir."""
    from elip_jax import data

    dataset = canonical_name(dataset)
    return dataset, data.resolve_data_dir(dataset, data_dir)


def default_text_key(dataset: str) -> str:
    return DEFAULT_TEXT_KEYS.get(base_name(dataset), FALLBACK_TEXT_KEY)


def eval_batches(dataset: str, split: str, *, data_dir: Optional[str], image_size: int, batch_size: int,
                 mesh: Mesh, image_key: str = "image", label_key: Optional[str] = "label"):
    """The sharded eval iterator: global uint8 image batches split over the mesh's 'data' axis."""
    from elip_jax import data

    sharding.check_batch_size(batch_size, mesh)
    return data.make_eval_iterator(dataset, split, data_dir=data_dir, image_size=image_size,
                                   global_batch_size=batch_size, image_key=image_key, label_key=label_key,
                                   sharding=sharding.batch_sharding(mesh))


def read_captions(dataset: str, split: str, data_dir: Optional[str], text_key: str, source=None) -> list[list[str]]:
    """captions[i] = the caption strings of example i (one str or a sequence of them per example).

    text_key may be nested with '/' ('captions/text'). source: any random-access sequence of example dicts
    (default: `elip_jax.data.open_source`), in the order of the eval iterator's 'index'.
    """
    if source is None:
        from elip_jax import data
        source = data.open_source(dataset, split, data_dir=data_dir)
    return [as_caption_list(lookup(source[i], text_key), i, text_key) for i in range(len(source))]


def lookup(example: dict, key: str):
    value = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"example has no caption feature {key!r} (at {part!r}; found {keys}); "
                             f"pass --text-key")
        value = value[part]
    return value


def as_caption_list(value, index: int, key: str) -> list[str]:
    if isinstance(value, (str, bytes)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"example {index}: {key!r} must be text or a list of texts; got {type(value).__name__}")
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in items]


def tfds_label_names(dataset: str, data_dir: Optional[str], label_key: str) -> Optional[Sequence[str]]:
    """The label names TFDS reports for `dataset`, or None where its builder cannot tell (not installed,
    needs TensorFlow, no such feature). Used only to check the class-name tables."""
    try:
        import tensorflow_datasets as tfds
        feature = tfds.builder(dataset, data_dir=data_dir).info.features[label_key]
        return list(feature.names)
    except Exception:  # the check is a safeguard, never a reason to fail an evaluation
        return None
