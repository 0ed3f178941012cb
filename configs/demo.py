"""The demo: a tiny CLIP pre-trained with ELIP on the built-in dataset; about 7 minutes on 2 CPU cores.

python -m elip_jax.train --config configs/demo.py --workdir workdirs/demo
python -m elip_jax.train --config configs/demo.py:none --workdir workdirs/demo_none   # the unpruned baseline
"""
from elip_jax.train.defaults import base_config


def get_config(arg: str = "elip"):
    c = base_config()
    c.model.name = "tiny"
    c.reduction.method = arg or "elip"
    c.batch_size = 128
    c.num_steps = 500
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.1
    c.checkpoint.every_steps = 200
    c.log_every_steps = 20
    c.eval.batch_size = 256
    c.data.num_workers = 2  # worker processes: the step never waits for input (BENCHMARKS.md)
    c.data.prefetch = 4
    return c
