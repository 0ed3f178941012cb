"""The built-in dataset's identity: its TFDS name, the 'builtin' alias and its configs. The one place that knows
them; everything else asks here (standard library only, so any room may import it cheaply).

Spellings: 'elip_shapes' (the config 'full'), 'elip_shapes/small', 'elip_shapes:1.0.0', and the alias
'builtin' ('builtin/small') that command lines accept for it.
"""
from __future__ import annotations

BUILTIN_DATASET = "elip_shapes"  # its TFDS name
BUILTIN_ALIAS = "builtin"  # what a user may type instead
BUILTIN_CONFIGS = ("full", "small")  # 'full' is what the bare name means; 'small' is for tests and smoke runs
DEFAULT_CONFIG = "full"


def base_name(name: str) -> str:
    """'eurosat/rgb:2.0.0' -> 'eurosat': the dataset name without config or version."""
    return name.split(":")[0].split("/")[0]


def is_builtin(name: str) -> bool:
    """True for the built-in dataset in any spelling (its name or the alias, with a config or a version)."""
    return isinstance(name, str) and base_name(name) in (BUILTIN_DATASET, BUILTIN_ALIAS)


def canonical_name(name: str) -> str:
    """The TFDS name: the alias 'builtin' becomes 'elip_shapes' (config and version kept); others are unchanged."""
    if isinstance(name, str) and base_name(name) == BUILTIN_ALIAS:
        return BUILTIN_DATASET + name[len(BUILTIN_ALIAS):]
    return name


def builtin_config(name: str) -> str:
    """The config a spelling of the built-in dataset names ('full' when none); ValueError for an unknown one."""
    parts = name.split(":")[0].split("/")
    config = parts[1] if len(parts) > 1 else DEFAULT_CONFIG
    if config not in BUILTIN_CONFIGS:
        raise ValueError(f"the built-in dataset has the configs {', '.join(BUILTIN_CONFIGS)}; got {name!r}")
    return config
