"""Host batches -> global jax.Arrays: each process contributes its local rows of the batch axis."""
from typing import Dict

import numpy as np


def process_layout(sharding) -> tuple:
    """(process_index, process_count) that shard the input: jax's when a sharding is given, else (0, 1)."""
    if sharding is None:
        return 0, 1
    import jax  # pylint: disable=g-import-not-at-top  # workers never need jax
    return jax.process_index(), jax.process_count()


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive int; got {global_batch_size!r}")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be divisible by the number of input "
                         f"processes ({process_count}): each process feeds an equal part of every batch")
    return global_batch_size // process_count


def to_global_arrays(batch: Dict[str, np.ndarray], sharding, global_batch_size: int) -> Dict:
    """Without a sharding, the numpy batch itself; with one, global arrays over the batch axis."""
    if sharding is None:
        return batch
    import jax  # pylint: disable=g-import-not-at-top
    return {key: jax.make_array_from_process_local_data(sharding, value, (global_batch_size,) + value.shape[1:])
            for key, value in batch.items()}
