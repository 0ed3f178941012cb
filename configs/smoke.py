"""A seconds-long run on the small built-in dataset: for tests and for checking a set-up end to end.

python -m elip_jax.train --config configs/smoke.py --workdir /tmp/smoke
python -m elip_jax.train --config configs/smoke.py:tome --workdir /tmp/smoke_tome   # ARG: any registered method
"""
from elip_jax.train.defaults import base_config


def get_config(arg: str = "elip"):
    c = base_config()
    c.model.name = "tiny"
    c.reduction.method = arg or "elip"
    c.data.name = "elip_shapes/small"
    c.data.prefetch = 0
    c.batch_size = 16
    c.num_steps = 12
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.checkpoint.every_steps = 2
    c.checkpoint.async_save = True
    c.log_every_steps = 1
    c.eval.datasets = ()
    c.eval.batch_size = 64
    return c
