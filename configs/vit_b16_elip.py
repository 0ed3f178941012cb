"""ViT-B/16 CLIP pre-training with ELIP on a TFDS image-text dataset (COCO captions by default).

python -m elip_jax.train --config configs/vit_b16_elip.py --workdir /shared/runs/elip-b16 \
    --config.data.data_dir=/data/tfds [--config.data.name=my_cc3m --config.data.caption_key=caption]
ARG picks the token-reduction method: elip (default) or any registered one (elip_inline, evit, random, tome,
none: elip_jax.reduction.registered_methods()).
The dataset must be built as array_record (see README 'Data'); nothing is downloaded at run time.
"""
import ml_collections

from elip_jax.train.defaults import base_config


def get_config(arg: str = "elip"):
    c = base_config()
    c.model.name = "ViT-B-16"
    c.model.dtype = "bfloat16"
    c.model.remat = False
    c.reduction.method = arg or "elip"  # default schedule: before blocks 2, 4, 10 keeping 0.9, 0.65, 0.4
    c.data.name = "coco_captions"
    c.data.split = "train"
    c.data.caption_key = "captions/text"
    c.data.num_workers = 8
    c.data.prefetch = 4
    c.batch_size = 4096
    c.num_steps = 20_000
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 2_000
    c.optim.weight_decay = 0.2
    c.param_sharding = "fsdp"  # parameters and Adam moments split over the fsdp axis
    c.mesh.data = -1
    c.mesh.fsdp = 1  # e.g. --config.mesh.fsdp=8 on a host with 8 accelerators
    c.checkpoint.every_steps = 1_000
    c.log_every_steps = 50
    c.evals = ml_collections.ConfigDict({  # zero-shot, unguided (ELIP never sees the ground truth)
        name: dict(type="zeroshot_classification", dataset=name, split="test", batch_size=256, every_steps=5_000)
        for name in ("cifar10", "cifar100")})
    return c
