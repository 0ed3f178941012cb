"""Input pipelines on TFDS (read without TensorFlow through tfds.data_source and grain) and the built-in
offline dataset, whose identity (names, alias, configs) lives in `names`. See README 'Data' for pointing the
pipelines at your own TFDS dataset.

Names are loaded on first use (PEP 562): `from elip_jax.data.names import is_builtin` costs no TFDS import.
"""
import importlib

# name -> the module that defines it
_EXPORTS = {
    "CONVERSIONS": "bad_data", "SKIP_REASONS": "bad_data",
    "check_dataset": "checks", "resolve_data_dir": "checks", "small_split_message": "checks",
    "default_data_config": "config", "validate_data_config": "config",
    "EvalIterator": "eval_pipeline", "make_eval_iterator": "eval_pipeline",
    "CLIP_MEAN": "normalize", "CLIP_STD": "normalize", "normalize_images": "normalize",
    "BUILTIN_ALIAS": "names", "BUILTIN_CONFIGS": "names", "BUILTIN_DATASET": "names", "builtin_config": "names",
    "canonical_name": "names", "is_builtin": "names",
    "builtin_classnames": "shapes_builder", "builtin_templates": "shapes_builder",
    "default_data_dir": "shapes_builder", "prepare_builtin": "shapes_builder",
    "prepare_builtin_once": "shapes_builder",
    "open_source": "sources",
    "TrainIterator": "train_pipeline", "make_train_iterator": "train_pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
