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


def state_shardings(abstract_state, mesh: Mesh, mode: str, rules: Sequence[tuple[str, P]] = ()):
    """NamedShardings for every leaf of a train state (parameters and the optimizer moments alike).

    mode: 'replicated' or 'fsdp'. rules: (regex over the '/'-joined leaf path, PartitionSpec) pairs tried
    first, so a user can pin any parameter's layout.
    """
    fsdp_size = mesh.shape["fsdp"]

    def leaf_sharding(path, leaf):
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        for pattern, spec in rules:
            if re.search(pattern, name):
                return NamedSharding(mesh, spec)
        shape = getattr(leaf, "shape", ())
        spec = fsdp_spec(shape, fsdp_size) if mode == "fsdp" else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)
