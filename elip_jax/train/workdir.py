"""Reading a training workdir back: the model it trains and the parameters of a checkpoint."""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from elip_jax.models.clip import CLIP
from elip_jax.models.config import config_from_dict

MODEL_CONFIG_FILE = "model_config.json"


def is_workdir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)) and os.path.isdir(os.path.join(path, "checkpoints"))


def load_workdir(workdir: str, step: Optional[int] = None, **overrides) -> tuple[CLIP, dict, int]:
    """(model without token reduction, {'params': ...}, step) from a workdir's latest (or given) checkpoint.

    overrides: CLIPConfig runtime fields such as dtype='bfloat16'.
    """
    if not is_workdir(workdir):
        raise ValueError(f"{workdir!r} is not a training workdir: expected {MODEL_CONFIG_FILE} and checkpoints/ "
                         "as written by `python -m elip_jax.train`")
    with open(os.path.join(workdir, MODEL_CONFIG_FILE)) as f:
        config = config_from_dict(json.load(f))
    if overrides:
        config = config.replace(**overrides)
    manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), item_names=("state",))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"{workdir!r} has no finished checkpoint yet")
    # host numpy arrays, whatever devices wrote the checkpoint: evaluation may run on another topology
    metadata = manager.item_metadata(step)["state"]
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=as_numpy)))["state"]
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), state["params"])
    return CLIP(config), {"params": params}, step
