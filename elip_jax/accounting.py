"""Cost accounting for the vision tower: analytic FLOPs per schedule, and XLA's own counts of a compiled program.

The analytic model counts only the matrix products of the transformer blocks (the part token reduction
changes); patch embedding, LayerNorms, softmaxes and the projection head are left out. XLA's numbers
(`xla_flops`, `xla_temp_bytes`) count everything the compiled program does and are the ones to trust; the
analytic ones say what the schedule should save, so a gap between the two points at wasted work.
"""
from __future__ import annotations

from typing import Any, Optional

from elip_jax.reduction import ReductionSchedule, get_method, registered_methods
from elip_jax.reduction.costs import block_flops, cls_row_flops  # noqa: F401  (the primitives, re-exported)


def scoring_formulas() -> dict:
    """Each registered method's scoring cost, in words."""
    return {name: get_method(name).flops_formula for name in registered_methods()}


# Stated in every benchmark JSON so the numbers can be checked by hand.
FORMULAS = {
    "block": "(8 + 4*mlp_ratio)*N*D^2 + 4*N^2*D  (= 24*N*D^2 + 4*N^2*D for mlp_ratio 4): QKV 6ND^2, "
             "out-proj 2ND^2, MLP 2*2*mlp_ratio*ND^2, QK^T and AV 2*2*N^2*D; N tokens entering the block, D width. "
             "A method that merges between the attention and the MLP branch (tome) counts the MLP on the tokens "
             "left after merging",
    "cls_row": "2*D^2 + 2*N*D^2 + 2*N*D: CLS query projection, key projection of all N tokens, CLS-row logits",
    "main_path": "sum over blocks of block(N_i), N_i = tokens entering block i under the schedule",
    "scoring": scoring_formulas(),  # the methods registered when accounting is imported; see formulas()
    "forward": "main_path + scoring",
    "image_train": "3*main_path + scoring (backward ~ 2x forward; scoring carries no gradient)",
}


def formulas() -> dict:
    """FORMULAS with the scoring cost of every method registered now."""
    return {**FORMULAS, "scoring": scoring_formulas()}


def tokens_per_block(schedule: ReductionSchedule) -> list[int]:
    """Tokens entering each block; all the input tokens for a schedule that does not prune."""
    if not schedule.prunes:
        return [schedule.input_tokens] * schedule.depth
    return schedule.tokens_per_block()


def scoring_flops_per_stage(schedule: ReductionSchedule, width: int, mlp_ratio: float = 4.0,
                            heads: Optional[int] = None) -> list[int]:
    """Extra FLOPs the method spends choosing its tokens (forward only, see FORMULAS['scoring']): one entry per
    active stage, or per block for a method that merges inside blocks. An unregistered method is a ValueError.
    heads: the tower's attention heads (needed by methods whose scoring works per head, such as tome)."""
    method = get_method(schedule.method)
    if not schedule.prunes:
        return []
    return [int(c) for c in method.scoring_flops(schedule, width, heads=heads, mlp_ratio=mlp_ratio)]


def analytic_image_flops(schedule: ReductionSchedule, width: int, mlp_ratio: float = 4.0,
                         heads: Optional[int] = None) -> dict:
    """Analytic FLOPs of the vision tower's blocks for one image (see FORMULAS)."""
    get_method(schedule.method)  # an unknown method fails here, loudly
    tokens = tokens_per_block(schedule)
    mlp_tokens = schedule.mlp_tokens_per_block() if schedule.prunes else tokens
    per_block = [block_flops(n, width, mlp_ratio, None if m == n else m) for n, m in zip(tokens, mlp_tokens)]
    per_stage = scoring_flops_per_stage(schedule, width, mlp_ratio, heads)
    main, scoring = sum(per_block), sum(per_stage)
    return {"per_block": per_block, "scoring_per_stage": per_stage, "main_path": main, "scoring": scoring,
            "forward": main + scoring, "image_train": 3 * main + scoring}


def xla_flops(compiled: Any) -> Optional[float]:
    """FLOPs XLA counted for a compiled program, or None where the backend gives no cost analysis.

    `cost_analysis()` returns a dict in new jax and a list with one dict per program in older jax.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends raise instead of returning nothing
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def xla_temp_bytes(compiled: Any) -> Optional[int]:
    """Temporary buffer bytes of a compiled program (activations and scratch), None where not reported."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    size = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    return int(size) if size is not None else None
