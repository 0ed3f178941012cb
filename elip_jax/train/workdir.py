"""Kept for old imports: workdirs are read by elip_jax.checkpoints (below train and evaluate)."""
from elip_jax.checkpoints.workdir import MODEL_CONFIG_FILE, is_workdir, load_workdir  # noqa: F401
