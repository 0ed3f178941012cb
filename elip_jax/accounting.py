"""Cost accounting for the vision tower: analytic FLOPs per schedule, and XLA's own counts of a compiled program.

The analytic model counts only the matrix products of the transformer blocks (the part token reduction
changes); patch embedding, LayerNorms, softmaxes and the projection head are left out. XLA's numbers
(`xla_flops`, `xla_temp_bytes`) count everything the compiled program does and are the ones to trust; the
analytic ones say what the schedule should save, so a gap between the two points at wasted work.
"""
from __future__ import annotations

from typing import Any, Optional

from elip_jax.reduction import ReductionSchedule

# Stated in every benchmark JSON so the numbers can be checked by hand.
FORMULAS = {
    "block": "(8 + 4*mlp_ratio)*N*D^2 + 4*N^2*D  (= 24*N*D^2 + 4*N^2*D for mlp_ratio 4): QKV 6ND^2, "
             "out-proj 2ND^2, MLP 2*2*mlp_ratio*ND^2, QK^T and AV 2*2*N^2*D; N tokens entering the block, D width",
    "cls_row": "2*D^2 + 2*N*D^2 + 2*N*D: CLS query projection, key projection of all N tokens, CLS-row logits",
    "main_path": "sum over blocks of block(N_i), N_i = tokens entering block i under the schedule",
    "scoring": {
        "none": "0",
        "random": "0 (uniform random scores)",
        "elip": "per active stage before block i with group i..i+n-1 and N = tokens before pruning: "
                "(n-1)*block(N) + cls_row(N)  (look-ahead, forward only)",
        "elip_inline": "per active stage: cls_row(N) (text-mixed CLS query and keys of block i)",
        "evit": "per active stage: cls_row(N) at block i-1 (this implementation recomputes the CLS row from "
                "block i-1's LayerNorm output beside the fused attention)",
    },
    "forward": "main_path + scoring",
    "image_train": "3*main_path + scoring (backward ~ 2x forward; scoring carries no gradient)",
}


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> int:
    """Matmul FLOPs of one pre-LN transformer block on `tokens` tokens of width `width` (see FORMULAS)."""
    linear = int(round((8 + 4 * mlp_ratio) * tokens * width * width))
    return linear + 4 * tokens * tokens * width


def cls_row_flops(tokens: int, width: int) -> int:
    """FLOPs of the head-averaged CLS-row attention alone: CLS query, all keys, one row of logits."""
    return 2 * width * width + 2 * tokens * width * width + 2 * tokens * width


def tokens_per_block(schedule: ReductionSchedule) -> list[int]:
    """Tokens entering each block; all 1 + P for a schedule that does not prune."""
    if not schedule.prunes:
        return [1 + schedule.num_patches] * schedule.depth
    return schedule.tokens_per_block()


def scoring_flops_per_stage(schedule: ReductionSchedule, width: int, mlp_ratio: float = 4.0) -> list[int]:
    """Extra FLOPs each active stage spends choosing its tokens (forward only, see FORMULAS['scoring'])."""
    counts = tokens_per_block(schedule)
    costs = []
    for stage in schedule.active_stages():
        begin = schedule.begin_layers[stage]
        before = counts[begin - 1] if begin > 0 else 1 + schedule.num_patches  # tokens before pruning
        if schedule.method == "elip":
            lookahead_blocks = schedule.group_end(stage) - begin - 1
            costs.append(lookahead_blocks * block_flops(before, width, mlp_ratio) + cls_row_flops(before, width))
        elif schedule.method in ("elip_inline", "evit"):
            costs.append(cls_row_flops(before, width))
        else:
            costs.append(0)
    return costs


def analytic_image_flops(schedule: ReductionSchedule, width: int, mlp_ratio: float = 4.0) -> dict:
    """Analytic FLOPs of the vision tower's blocks for one image (see FORMULAS)."""
    per_block = [block_flops(n, width, mlp_ratio) for n in tokens_per_block(schedule)]
    per_stage = scoring_flops_per_stage(schedule, width, mlp_ratio)
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
