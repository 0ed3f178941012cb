"""A 12-block tiny CLIP on the built-in dataset: the towers' depth of the papers (ViT-B/16 has 12 blocks), so the
default schedules are the published ones (ELIP prunes before blocks 2, 4 and 10; Patch Ranking before block 3),
at a size that trains on CPU (64 px images of 8x8 patches: 64 patches, width 64).

python -m elip_jax.train --config configs/tower12.py:none --workdir workdirs/tower12-none
ARG: any registered reduction method (default elip).
"""
from elip_jax.train.defaults import base_config


def get_config(arg: str = "elip"):
    c = base_config()
    c.model.name = "tiny-12"
    c.reduction.method = arg or "elip"
    c.batch_size = 128
    c.num_steps = 600
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.1
    c.checkpoint.every_steps = 100
    c.log_every_steps = 20
    c.eval.batch_size = 256
    c.data.num_workers = 2
    c.data.prefetch = 4
    return c
