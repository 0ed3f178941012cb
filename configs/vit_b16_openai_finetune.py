"""Continued training of converted OpenAI CLIP ViT-B/16 weights with ELIP.

python -m elip_jax.convert --input ViT-B-16.pt --output ckpt/openai-vit-b-16 --model ViT-B-16
python -m elip_jax.train --config configs/vit_b16_openai_finetune.py:ckpt/openai-vit-b-16 --workdir runs/ft \
    --config.data.data_dir=/data/tfds
ARG: the converted checkpoint folder (the architecture is read from it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # config files are loaded by path, not as a package
from vit_b16_elip import get_config as pretraining_config  # noqa: E402


def get_config(arg: str = ""):
    if not arg:
        raise ValueError("configs/vit_b16_openai_finetune.py needs the converted checkpoint folder: "
                         "--config configs/vit_b16_openai_finetune.py:DIR (from python -m elip_jax.convert)")
    c = pretraining_config("elip")
    c.model.init_from = arg
    c.batch_size = 1024
    c.num_steps = 5_000
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 0.1
    c.eval.every_steps = 1_000
    return c
