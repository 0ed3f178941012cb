"""The study's config (python -m elip_jax.study): configs/tower12.py's 12-block tiny CLIP at half its batch and
half its steps, so that one run takes a few minutes on 2 shared CPU cores and a study of several methods and
seeds fits in about an hour (BENCHMARKS.md, "Does ELIP keep accuracy"). ELIP's default schedule on 12 blocks is
the published one (prune before blocks 2, 4 and 10 to 90 %, 65 %, 40 % of the patches).

python -m elip_jax.study --config configs/study12.py --methods none,elip --seeds 3 --workdir workdirs/study12
ARG: the reduction method of a plain training run (the study sets each run's own).
"""
from elip_jax.train.defaults import base_config


def get_config(arg: str = "elip"):
    c = base_config()
    c.model.name = "tiny-12"
    c.reduction.method = arg or "elip"
    c.batch_size = 64
    c.num_steps = 300
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 0.1
    c.checkpoint.every_steps = 50  # a killed study loses at most a minute of a run
    c.log_every_steps = 10
    c.eval.batch_size = 256
    c.data.num_workers = 2
    c.data.prefetch = 4
    return c
