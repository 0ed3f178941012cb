"""elip_jax: ELIP text-guided vision-token pruning and merging for CLIP pre-training, in JAX/Flax.

The names below are loaded on first use (PEP 562), so `import elip_jax.data` (a data worker) or
`import elip_jax.tokenizer` runs no model code: importing a subpackage executes this file first.
"""
import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "CLIP": "elip_jax.models", "CLIPConfig": "elip_jax.models", "create_model": "elip_jax.models",
    "get_config": "elip_jax.models", "list_models": "elip_jax.models",
    "ReductionSchedule": "elip_jax.reduction", "make_schedule": "elip_jax.reduction",
    "load_pretrained": "elip_jax.checkpoints",  # converted folders and training workdirs
    "tokenize": "elip_jax.tokenizer",  # identical to OpenAI CLIP's tokenizer
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'elip_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
