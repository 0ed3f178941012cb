"""Analytic FLOP primitives of a pre-LN transformer block (matrix products only), shared by the methods' scoring
costs and `elip_jax.accounting`."""
from __future__ import annotations

from typing import Optional


def attention_flops(tokens: int, width: int) -> int:
    """QKV 6*N*D^2, out-projection 2*N*D^2, QK^T and AV 2*2*N^2*D."""
    return 8 * tokens * width * width + 4 * tokens * tokens * width


def mlp_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> int:
    return int(round(4 * mlp_ratio * tokens * width * width))


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0, mlp_tokens: Optional[int] = None) -> int:
    """Matmul FLOPs of one block on `tokens` tokens: (8 + 4*mlp_ratio)*N*D^2 + 4*N^2*D. mlp_tokens: tokens left
    for the MLP branch when a method merges between the two branches (ToMe); None: the same N."""
    if mlp_tokens is None:
        linear = int(round((8 + 4 * mlp_ratio) * tokens * width * width))
        return linear + 4 * tokens * tokens * width
    return attention_flops(tokens, width) + mlp_flops(mlp_tokens, width, mlp_ratio)


def cls_row_flops(tokens: int, width: int) -> int:
    """FLOPs of the head-averaged CLS-row attention alone: CLS query, all keys, one row of logits."""
    return 2 * width * width + 2 * tokens * width * width + 2 * tokens * width
