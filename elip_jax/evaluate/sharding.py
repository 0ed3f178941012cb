"""The evaluation mesh, and moving arrays onto it and back to the host, on one process or many.

Evaluation is data-parallel only: a 1-D mesh over every device of every process with the axis 'data'.
Images are split on the batch axis; parameters and the class embeddings are replicated. Results are brought
back to every process (they are small: top-k class ids or embeddings), so every process computes the same
metrics and no process waits on another one that has stopped.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if global_batch_size < 1 or global_batch_size % devices:
        raise ValueError(f"the global batch size must be a positive multiple of the {devices} devices of the "
                         f"mesh; got {global_batch_size}")


def replicate(tree, mesh: Mesh):
    """Every leaf as a global array replicated over `mesh`.

    Leaves already spread over several processes (a trainer's sharded parameters) are left where they are:
    jit reshards them as the program needs, and copying them through one host would not scale.
    """
    sharding = replicated(mesh)

    def place(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return leaf
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(place, tree)


def shard_host_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global array split over 'data' from a host array that every process holds in full (e.g. tokens)."""
    batch = np.asarray(batch)
    return jax.make_array_from_callback(batch.shape, batch_sharding(mesh), lambda index: batch[index])


def to_host(x) -> np.ndarray:
    """The full value of a (possibly multi-process) array, on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def is_main_process() -> bool:
    return jax.process_index() == 0
