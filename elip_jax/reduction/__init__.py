"""Token reduction inside the vision tower: schedules, static-shape select/merge, scoring methods."""
from elip_jax.reduction.methods import SCORERS, StageInputs, mix_guide_into_cls, score_candidates
from elip_jax.reduction.ops import prune_tokens
from elip_jax.reduction.schedule import (METHODS, TEXT_GUIDED, ReductionSchedule, default_begin_layers,
                                         make_schedule)

__all__ = ["METHODS", "TEXT_GUIDED", "ReductionSchedule", "SCORERS", "StageInputs", "default_begin_layers",
           "make_schedule", "mix_guide_into_cls", "prune_tokens", "score_candidates"]
