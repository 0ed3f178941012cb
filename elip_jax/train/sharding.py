"""The device mesh and how parameters and batches are laid out on it.

Axes: 'data' (pure data parallelism) and 'fsdp' (data parallelism whose devices also split the parameters
and optimizer state). The batch is split over both; the token axis is never split, so token selection
stays on the device that holds the example.
"""
from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated under FSDP: splitting them saves nothing worth a collective.
FSDP_MIN_SIZE = 2 ** 14


def make_mesh(mesh_config, devices: Sequence = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    fsdp = mesh_config.fsdp
    data = mesh_config.data if mesh_config.data != -1 else len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"config.mesh: data ({mesh_config.data} -> {data}) x fsdp ({fsdp}) must equal the "
                         f"number of devices ({len(devices)})")
    return Mesh(np.array(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp_size: int) -> P:
    """Split the largest dimension that the fsdp axis divides; replicate small or indivisible arrays."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def partition_spec(spec) -> P:
    """A PartitionSpec from a config tuple: one entry per dimension, None, an axis name or a tuple of names."""
    return spec if isinstance(spec, P) else P(*(tuple(e) if isinstance(e, (list, tuple)) else e for e in spec))


def check_rules(rules) -> None:
    """config.sharding_rules: (regex, spec) pairs whose specs name only mesh axes; raises naming the bad one."""
    for i, rule in enumerate(rules):
        if not isinstance(rule, (list, tuple)) or len(rule) != 2:
            raise ValueError(f"config.sharding_rules[{i}] = {rule!r} is invalid: expected a (regex, spec) pair")
        pattern, spec = rule
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(f"config.sharding_rules[{i}]: {pattern!r} is not a regex ({error})") from None
        if not isinstance(spec, (list, tuple, P)):
            raise ValueError(f"config.sharding_rules[{i}]: spec {spec!r} is invalid: expected a tuple with one "
                             f"entry per dimension (None, or axis names from {BATCH_AXES})")
        for entry in spec:
            for axis in (entry if isinstance(entry, (list, tuple)) else (entry,)):
                if axis is not None and axis not in BATCH_AXES:
                    raise ValueError(f"config.sharding_rules[{i}] ({pattern!r}): axis {axis!r} is not a mesh "
                                     f"axis: expected None or one of {BATCH_AXES}")


def state_shardings(abstract_state, mesh: Mesh, mode: str, rules: Sequence[tuple[str, P]] = ()):
    """NamedShardings for every leaf of a train state (parameters and the optimizer moments alike).

    mode: 'replicated' or 'fsdp'. rules: (regex, PartitionSpec or tuple) pairs tried first, matched against
    the '/'-joined parameter path ('vision/proj'); an optimizer moment follows the rule of its parameter.
    """
    from elip_jax.train.optim import param_path
    fsdp_size = mesh.shape["fsdp"]
    rules = [(re.compile(pattern), partition_spec(spec)) for pattern, spec in rules]
    params = getattr(abstract_state, "params", None)
    param_names = {param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]} if params else set()

    def as_param(name: str) -> str:  # 'opt_state/0/mu/vision/proj' -> 'vision/proj'
        parts = name.split("/")
        return next(("/".join(parts[i:]) for i in range(len(parts)) if "/".join(parts[i:]) in param_names), name)

    def leaf_sharding(path, leaf):
        name, shape = as_param(param_path(path)), getattr(leaf, "shape", ())
        for pattern, spec in rules if name in param_names or not param_names else ():
            if pattern.search(name):
                if len(spec) > len(shape):
                    raise ValueError(f"config.sharding_rules: {pattern.pattern!r} gives {name} (shape {shape}) "
                                     f"the spec {spec}, which has more entries than dimensions")
                return NamedSharding(mesh, spec)
        spec = fsdp_spec(shape, fsdp_size) if mode == "fsdp" else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)
