"""Checkpoints a user can name: converted folders and training workdirs, read by one loader.

Below train and evaluate (both read workdirs through here), so neither imports the other; convert writes its
folders through here. Modules: folder (the elip_jax converted-folder format), workdir (training workdirs read
back), params (shape checks with the schedule's own parameters, variables fitted to another schedule),
loading (the one loader), overlay (what one checkpoint learned on top of a backbone, a predictor and learnable
tokens, laid over another copy of that backbone).
    load(source, reduction=None, seed=0, **overrides) -> (model, variables, name)
"""
from elip_jax.checkpoints.folder import (ELIP_JAX_FORMAT, CheckpointError, load_params, read_config, read_reduction,
                                         save_pretrained)
from elip_jax.checkpoints.loading import EXPECTED, is_converted_folder, load, load_pretrained, random_variables
from elip_jax.checkpoints.overlay import OverlayError, method_parameter_names, overlay
from elip_jax.checkpoints.params import (ParamShapeError, check_param_shapes, expected_param_shapes, fit_variables,
                                         schedule_options)
from elip_jax.checkpoints.workdir import (CHECKPOINTS_DIR, CONFIG_FILE, CONFIG_HISTORY_FILE, MODEL_CONFIG_FILE,
                                          REDUCTION_FILE, NoRestorableCheckpointError, checkpoint_steps, is_workdir,
                                          load_workdir, restore_newest, short_reason, write_reduction)

__all__ = ["CHECKPOINTS_DIR", "CONFIG_FILE", "CONFIG_HISTORY_FILE", "CheckpointError", "ELIP_JAX_FORMAT", "EXPECTED",
           "MODEL_CONFIG_FILE", "NoRestorableCheckpointError", "OverlayError", "ParamShapeError", "REDUCTION_FILE",
           "check_param_shapes", "checkpoint_steps", "expected_param_shapes", "fit_variables", "is_converted_folder",
           "is_workdir", "load", "load_params", "load_pretrained", "load_workdir", "method_parameter_names", "overlay",
           "random_variables", "read_config", "read_reduction", "restore_newest", "save_pretrained", "schedule_options",
           "short_reason", "write_reduction"]
