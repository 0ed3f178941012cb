"""Patch Ranking (Wu et al., WACV 2025; docs/patch_ranking.md): golden rankings, the
predictor's training and learnable tokens. The pruned inference itself is the registered reduction method
`patch_ranking` (elip_jax.reduction.patch_ranking); this package produces what it needs.

Names load on first use (PEP 562), so the command's `--help` imports no JAX.
"""
import importlib

# name -> the module that defines it
_EXPORTS = {
    "golden_ranking": "elip_jax.patch_ranking.golden",
    "read_rankings": "elip_jax.patch_ranking.rankings",
    "RankingsReader": "elip_jax.patch_ranking.rankings",
    "bottom_k_overlap": "elip_jax.patch_ranking.objective",
    "ranking_targets": "elip_jax.patch_ranking.objective",
    "kl_to_golden": "elip_jax.patch_ranking.objective",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'elip_jax.patch_ranking' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
