"""Token reduction inside the vision tower: the registry of methods, schedules, static-shape select/merge.

Every method is a registered `ReductionMethod` (`get_method(name)`, `registered_methods()`); importing this
package registers the built-in ones: `none`, `elip`, `elip_inline`, `evit`, `random` (methods.py), `tome` and
`patch_ranking`.
"""
from elip_jax.reduction.registry import (ReductionMethod, evaluation_methods, get_method, inference_methods,
                                         register, registered_methods)
from elip_jax.reduction.schedule import ReductionSchedule, default_begin_layers, make_schedule
from elip_jax.reduction.methods import StageInputs, mix_guide_into_cls
from elip_jax.reduction.ops import prune_tokens
from elip_jax.reduction import tome  # registers `tome`
from elip_jax.reduction import patch_ranking  # registers `patch_ranking`

__all__ = ["ReductionMethod", "ReductionSchedule", "StageInputs", "default_begin_layers", "evaluation_methods",
           "get_method", "inference_methods", "make_schedule", "mix_guide_into_cls", "prune_tokens", "register",
           "patch_ranking", "registered_methods", "tome"]


def __getattr__(name):
    # METHODS (a tuple of names) predates the registry; it is the registry's list at the time of asking.
    if name == "METHODS":
        return registered_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
