"""Checkpoints a user can name: converted folders and training workdirs, read by one loader.

Below train and evaluate (both read workdirs through here), so neither imports the other.
    load(source, reduction=None, seed=0, **overrides) -> (model, variables, name)
"""
from elip_jax.checkpoints.loading import EXPECTED, is_converted_folder, load, load_pretrained, random_variables
from elip_jax.checkpoints.workdir import (CHECKPOINTS_DIR, CONFIG_FILE, CONFIG_HISTORY_FILE, MODEL_CONFIG_FILE,
                                          NoRestorableCheckpointError, checkpoint_steps, is_workdir, load_workdir,
                                          restore_newest, short_reason)

__all__ = ["CHECKPOINTS_DIR", "CONFIG_FILE", "CONFIG_HISTORY_FILE", "EXPECTED", "MODEL_CONFIG_FILE",
           "NoRestorableCheckpointError", "checkpoint_steps", "is_converted_folder", "is_workdir", "load",
           "load_pretrained", "load_workdir", "random_variables", "restore_newest", "short_reason"]
