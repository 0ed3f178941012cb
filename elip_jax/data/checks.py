"""Checks of a dataset request that need no model and no compilation: run them before anything compiles.

A command line should fail in one sentence, within seconds, on a mistyped dataset name, split or feature key,
an empty split or a data directory that does not exist, not after minutes of compilation or with TFDS's
500-line list of every dataset it knows.
"""
import contextlib
import logging
import os
import re
from typing import Mapping, Optional, Sequence, Union

import tensorflow_datasets as tfds

from elip_jax.data import shapes_builder
from elip_jax.data.names import builtin_config, canonical_name, is_builtin  # noqa: F401  (asked here by others)

Keys = Union[Mapping[str, str], Sequence[str]]


def check_data_dir(data_dir: Optional[str]) -> None:
    """A data directory the user gave must exist: a typo must not become a new, empty dataset folder."""
    if data_dir is not None and not os.path.isdir(os.fspath(data_dir)):
        what = "a file, not a directory" if os.path.exists(os.fspath(data_dir)) else "does not exist"
        raise ValueError(f"data directory {os.fspath(data_dir)!r} {what}; give the folder that holds your prepared "
                         "TFDS datasets (for the built-in dataset, any existing folder: it is generated inside)")


def resolve_data_dir(name: str, data_dir: Optional[str] = None) -> Optional[str]:
    """The data directory that holds `name`: for the built-in dataset (any config) the folder it is prepared in,
    generated there on first use (by process 0 while the others wait, in a multi-process job); for other
    datasets `data_dir` as given (None: TFDS's default)."""
    check_data_dir(data_dir)
    if is_builtin(name):
        return shapes_builder.prepare_builtin_once(data_dir, config=builtin_config(name))
    return None if data_dir is None else os.fspath(data_dir)


def short_tfds_error(name: str, error: Exception) -> str:
    """TFDS's message for an unknown name lists every dataset it knows; keep its suggestion only."""
    text = str(error)
    suggestion = re.search(r"Did you mean: \S+ -> (\S+) \?", text)
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if isinstance(error, tfds.core.registered.DatasetNotFoundError):
        return f"unknown dataset {name!r}{hint}: not a TFDS name and not found in the data directory"
    return f"dataset {name!r}: {first_line}"


def load_builder(name: str, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `name` ('dataset', 'dataset/config', 'dataset:1.0.0') in its resolved data directory;
    never downloads. Raises ValueError in one sentence for an unknown name or config."""
    data_dir = resolve_data_dir(name, data_dir)
    try:
        with quiet_absl():  # "Variant folder ... has no dataset_info.json" for an unprepared dataset: said below
            return tfds.builder(canonical_name(name), data_dir=data_dir)
    except Exception as error:  # pylint: disable=broad-except  # TFDS raises several types, with long messages
        raise ValueError(short_tfds_error(name, error)) from error


@contextlib.contextmanager
def quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def feature_names(features, prefix: str = "") -> list:
    """Every feature path of a TFDS FeaturesDict, nested ones joined with '/' ('captions/text')."""
    names = []
    for key, feature in features.items():
        path = prefix + key
        inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
        if isinstance(inner, tfds.features.FeaturesDict):
            names.extend(feature_names(inner, path + "/"))
        else:
            names.append(path)
    return names


def has_feature(features, path: str) -> bool:
    feature = features
    for part in path.split("/"):
        if isinstance(feature, tfds.features.Sequence):
            feature = feature.feature
        if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature.keys():
            return False
        feature = feature[part]
    return True


def check_dataset(name: str, split: str, data_dir: Optional[str] = None, keys: Keys = ()) -> int:
    """Checks that `name`/`split` is a prepared TFDS dataset with the features `keys`; returns the split's size.

    keys: feature paths ('image', 'captions/text'), or a mapping from what the user calls each key (a flag
    such as '--label-key', a config field such as 'data.caption_key') to the path, so that the message names
    what to fix. The built-in dataset is generated here on first use. Raises ValueError in one sentence for:
    a data directory that does not exist, an unknown dataset or config, a dataset that is not prepared, an
    unknown or empty split, a missing feature. Needs no model and compiles nothing.
    """
    with quiet_absl():
        return _check_dataset(name, split, data_dir, keys)


def _check_dataset(name: str, split: str, data_dir: Optional[str], keys: Keys) -> int:
    builder = load_builder(name, data_dir)
    where = builder.data_dir if data_dir is not None or is_builtin(name) else "TFDS's default data directory"
    if builder.is_prepared():
        splits = sorted(builder.info.splits.keys())
        try:
            num_examples = builder.info.splits[split].num_examples
        except Exception as error:  # pylint: disable=broad-except  # KeyError or ValueError for a bad split spec
            raise ValueError(f"dataset {name!r} has no split {split!r} (its splits: {', '.join(splits)}; slices "
                             "such as 'train[:10%]' work too)") from error
    else:
        num_examples = readable_size_unprepared(name, split, data_dir)
        if num_examples is None:
            raise ValueError(f"dataset {name!r} is not prepared in {where} and elip_jax never downloads: build it "
                             f"once with `tfds build {name} --data_dir=DIR --file_format=array_record` and pass "
                             "that DIR as the data directory")
    if not num_examples:
        raise ValueError(f"split {split!r} of dataset {name!r} is empty")
    named = dict(keys) if isinstance(keys, Mapping) else {key: key for key in keys}
    features = builder.info.features
    for label, path in named.items():
        if not isinstance(path, str) or not path or not has_feature(features, path):
            flag = f" (given as {label})" if label != path else ""
            raise ValueError(f"dataset {name!r} has no feature {path!r}{flag}; its features are: "
                             f"{', '.join(sorted(feature_names(features)))}")
    return int(num_examples)


def readable_size_unprepared(name: str, split: str, data_dir: Optional[str]) -> Optional[int]:
    """The size of a split TFDS can read although its builder is not prepared (tfds.testing.mock_data), else None."""
    try:
        return len(tfds.data_source(canonical_name(name), split=split, data_dir=data_dir, download=False))
    except Exception:  # pylint: disable=broad-except  # not readable: the caller says how to prepare it
        return None


def small_split_message(name: str, split: str, num_examples: int, batch_size: int,
                        consequence: str) -> Optional[str]:
    """A one-line warning when a split holds fewer examples than one batch, or None."""
    if num_examples >= batch_size:
        return None
    return (f"split {split!r} of {name!r} has {num_examples} examples, fewer than the batch of {batch_size}: "
            f"{consequence}")
