"""Random-access sources for TFDS datasets, read without TensorFlow.

`tfds.data_source` gives random access (what grain needs for global shuffling, sharding and exact resume) for
datasets stored as array_record (or parquet). Datasets built with TFDS's default file format, tfrecord, have no
random access: they are read through tf.data when TensorFlow is importable (tfrecord_stream.py), otherwise
the error says how to convert them.
"""
import importlib.util
from typing import Optional

import tensorflow_datasets as tfds

from elip_jax.data import checks

RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def tfrecord_conversion_message(name: str, data_dir: Optional[str]) -> str:
    root = data_dir or "<your TFDS data_dir>"
    return (
        f"TFDS dataset {name!r} in {root} is stored as tfrecord, which has no random access and cannot be read "
        "without TensorFlow (`tfds.data_source` needs array_record). Either install TensorFlow (the pipeline "
        "then reads tfrecord through tf.data), or convert the dataset once, on a machine with TensorFlow, with:\n"
        f"  tfds convert_format --root_data_dir={root} --out_file_format=array_record\n"
        f"(or rebuild it: `tfds build {name.split('/')[0]} --data_dir={root} --file_format=array_record`).")


def load_builder(name: str, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
    """The builder of `name` ('dataset', 'dataset/config' or 'dataset:1.0.0'); never downloads.

    The built-in dataset (any config) is generated on first use; a data_dir that does not exist is an error.
    """
    return checks.load_builder(name, data_dir)


def image_features(builder: tfds.core.DatasetBuilder) -> list:
    """Names of the top-level Image features: those are read as encoded bytes and decoded by bad_data.py."""
    features = builder.info.features
    return [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]


def is_tfrecord(builder: tfds.core.DatasetBuilder) -> bool:
    """True for a prepared dataset stored without random access (tfrecord or riegeli)."""
    if not builder.is_prepared():
        return False
    file_format = builder.info.file_format
    return file_format is not None and file_format.value not in RANDOM_ACCESS_FORMATS


def open_source(dataset: str, split: str, data_dir: Optional[str] = None):
    """Random-access source (tfds.data_source) of `dataset`/`split`, its Image features left encoded.

    Raises a ValueError naming the fix when the dataset is stored as tfrecord (with TensorFlow installed the
    pipelines still read it, through tfrecord_stream) or is not prepared (nothing is downloaded at run time).
    """
    data_dir = checks.resolve_data_dir(dataset, data_dir)  # the built-in dataset's folder, not TFDS's default
    builder = load_builder(dataset, data_dir)
    if is_tfrecord(builder):
        message = tfrecord_conversion_message(dataset, data_dir)
        if tensorflow_available():
            message += ("\nTensorFlow is installed: make_train_iterator / make_eval_iterator read it through "
                        "tf.data; only open_source needs random access.")
        raise ValueError(message)
    # Skipping image decoding inside TFDS means a corrupt image cannot raise inside the reader: bad_data.py
    # decodes, converts or skips it and counts why.
    decoders = {key: tfds.decode.SkipDecoding() for key in image_features(builder)}
    try:
        return tfds.data_source(checks.canonical_name(dataset), split=split, data_dir=data_dir, download=False,
                                decoders=decoders or None)
    except Exception as error:  # pylint: disable=broad-except
        if builder.is_prepared():
            raise
        raise ValueError(
            f"TFDS dataset {dataset!r} is not prepared in {builder.data_dir!r} and elip_jax never downloads at "
            f"run time. Prepare it first, e.g. `tfds build {dataset} --data_dir=DIR --file_format=array_record`, "
            "and set data_config.data_dir (or data_dir=) to DIR.") from error
