"""Input pipelines on TFDS (read without TensorFlow through tfds.data_source and grain) and the built-in
offline dataset. See README 'Data' for pointing the pipelines at your own TFDS dataset."""
from elip_jax.data.bad_data import CONVERSIONS, SKIP_REASONS
from elip_jax.data.checks import check_dataset, resolve_data_dir, small_split_message
from elip_jax.data.config import default_data_config, validate_data_config
from elip_jax.data.eval_pipeline import EvalIterator, make_eval_iterator
from elip_jax.data.normalize import CLIP_MEAN, CLIP_STD, normalize_images
from elip_jax.data.shapes_builder import (BUILTIN_DATASET, builtin_classnames, builtin_templates,
                                          default_data_dir, prepare_builtin)
from elip_jax.data.sources import open_source
from elip_jax.data.train_pipeline import TrainIterator, make_train_iterator

__all__ = [
    "BUILTIN_DATASET", "CLIP_MEAN", "CLIP_STD", "CONVERSIONS", "EvalIterator", "SKIP_REASONS", "TrainIterator",
    "builtin_classnames", "builtin_templates", "check_dataset", "default_data_config", "default_data_dir",
    "make_eval_iterator", "make_train_iterator", "normalize_images", "open_source", "prepare_builtin",
    "resolve_data_dir", "small_split_message", "validate_data_config",
]
