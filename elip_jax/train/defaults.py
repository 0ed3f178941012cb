"""The base training config every file in configs/ starts from, and its validation.

Config as code (ml_collections): configs/NAME.py defines get_config(arg) by editing `base_config()`, and any
key can be overridden on the command line (--config.optim.lr=1e-4). `validate_config` runs before anything
compiles and names the bad key, the given value and what is allowed.
"""
from __future__ import annotations

import re

import ml_collections

from elip_jax.data import default_data_config
from elip_jax.models.config import ARCHITECTURES, ALIASES, DTYPES
from elip_jax.reduction import evaluation_methods, registered_methods
from elip_jax.train.losses import LOSSES
from elip_jax.train.sharding import check_rules


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        name="ViT-B-16",
        dtype="float32",  # compute dtype; parameters stay fp32. 'bfloat16' on accelerators
        remat=False,  # rematerialise every block in the backward pass (activation memory for compute)
        image_size=0,  # 0: the architecture's own resolution
        init_from="",  # a directory written by `python -m elip_jax.convert` (continued training)
    ))
    c.reduction = ml_collections.ConfigDict(dict(
        method="elip",  # a registered method: elip_jax.reduction.registered_methods()
        begin_layers=(),  # (): the default schedule for the tower's depth (2, 4, 10 for 12 blocks)
        keep_ratios=(),  # (): (0.9, 0.65, 0.4), of the original patch count
        keep=(),  # exact patch counts per stage instead of keep_ratios, e.g. (118,)
        mix=0.8,  # lambda of the text-mixed CLS in the look-ahead
        r=-1,  # ToMe: tokens merged in every block; -1: the method's default for the tower
        decreasing=False,  # ToMe: r falls linearly from 2r to 0 over the blocks
        protected=0,  # learnable tokens after the patches, never pruned or merged
    ))
    c.data = default_data_config()
    c.data.data_dir = ""  # "": the default data directory ($ELIP_JAX_DATA_DIR or ~/.cache/elip_jax/...)
    c.batch_size = 256  # global, over all devices and processes
    c.num_steps = 1000
    c.loss = "clip"  # a name in elip_jax.train.losses.LOSSES: 'clip' (softmax) or 'siglip' (sigmoid, learned bias)
    c.logit_scale_max = 100.0
    c.optim = ml_collections.ConfigDict(dict(
        lr=5e-4, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2,
        grad_clip_norm=1.0,  # 0 disables clipping
        grad_accum_steps=1,  # micro-batches per step; the contrastive loss sees one micro-batch at a time
        frozen=(),  # regexes over '/'-joined parameter paths ('^text/.*'): no update, no optimizer state
    ))
    c.mesh = ml_collections.ConfigDict(dict(
        data=-1,  # -1: all devices not used by the other axes
        fsdp=1,
    ))
    c.param_sharding = "replicated"  # or 'fsdp': every large parameter split over the 'fsdp' axis
    # (regex over the parameter path, spec) pairs tried before param_sharding; a spec has one entry per
    # dimension: None, 'data', 'fsdp' or a tuple of them, e.g. (("^vision/proj$", (None, "fsdp")),)
    c.sharding_rules = ()
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=500, keep=3, async_save=True,
    ))
    c.max_consecutive_nonfinite = 5  # non-finite losses in a row before the run stops
    c.log_every_steps = 10
    c.eval = ml_collections.ConfigDict(dict(
        every_steps=0,  # 0: only at the end
        datasets=("",),  # TFDS names for zero-shot classification; "" -> the training dataset if it has labels
        split="test",
        batch_size=256,
        reduction="none",  # any of elip_jax.reduction.evaluation_methods(); ELIP never guides with the ground truth
        data_dir="",  # TFDS data_dir of the evaluation datasets ("": TFDS's default)
    ))
    # named evaluators (elip_jax/evaluate/evaluators.py), e.g. evals.cifar10 = dict(type="zeroshot_classification",
    # dataset="cifar10", every_steps=5000); empty: zero-shot classification as config.eval above says
    c.evals = ml_collections.ConfigDict()
    c.peak_flops_per_device = 0.0  # for MFU; 0 -> looked up from the device kind where known
    return c


def _fail(key, value, expected):
    raise ValueError(f"config.{key} = {value!r} is invalid: expected {expected}")


def validate_config(c: ml_collections.ConfigDict) -> None:
    """Checks every key the trainer reads before anything is compiled; raises ValueError naming the key."""
    def positive_int(key, value, minimum=1):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            _fail(key, value, f"an int >= {minimum}")

    names = sorted(ARCHITECTURES) + sorted(ALIASES)
    if c.model.name not in names:
        _fail("model.name", c.model.name, f"one of {names}")
    if c.model.dtype not in DTYPES:
        _fail("model.dtype", c.model.dtype, f"one of {sorted(DTYPES)}")
    positive_int("model.image_size", c.model.image_size, 0)
    if c.reduction.method not in registered_methods():
        _fail("reduction.method", c.reduction.method, f"one of {registered_methods()}")
    counts = "keep" if c.reduction.keep else "keep_ratios"
    if c.reduction.keep and c.reduction.keep_ratios:
        _fail("reduction.keep", c.reduction.keep, "empty when reduction.keep_ratios is given (one or the other)")
    if len(c.reduction.begin_layers) != len(c.reduction[counts]) and c.reduction.begin_layers:
        _fail(f"reduction.{counts}", c.reduction[counts],
              f"one entry per begin layer {tuple(c.reduction.begin_layers)}")
    positive_int("batch_size", c.batch_size)
    positive_int("num_steps", c.num_steps)
    if c.loss not in LOSSES:
        _fail("loss", c.loss, f"one of {sorted(LOSSES)}")
    if not c.logit_scale_max > 0:
        _fail("logit_scale_max", c.logit_scale_max, "a positive float")
    o = c.optim
    if not o.lr > 0:
        _fail("optim.lr", o.lr, "a positive float")
    positive_int("optim.warmup_steps", o.warmup_steps, 0)
    if not 0 <= o.end_lr_ratio <= 1:
        _fail("optim.end_lr_ratio", o.end_lr_ratio, "a float in [0, 1]")
    if not o.weight_decay >= 0:
        _fail("optim.weight_decay", o.weight_decay, "a float >= 0")
    if not o.grad_clip_norm >= 0:
        _fail("optim.grad_clip_norm", o.grad_clip_norm, "a float >= 0 (0 disables clipping)")
    positive_int("optim.grad_accum_steps", o.grad_accum_steps)
    if c.batch_size % o.grad_accum_steps:
        _fail("optim.grad_accum_steps", o.grad_accum_steps, f"a divisor of batch_size ({c.batch_size})")
    if not (c.mesh.data == -1 or (isinstance(c.mesh.data, int) and c.mesh.data >= 1)):
        _fail("mesh.data", c.mesh.data, "-1 (all remaining devices) or an int >= 1")
    positive_int("mesh.fsdp", c.mesh.fsdp)
    if c.param_sharding not in ("replicated", "fsdp"):
        _fail("param_sharding", c.param_sharding, "'replicated' or 'fsdp'")
    check_rules(c.get("sharding_rules", ()))
    for i, pattern in enumerate(o.get("frozen", ())):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            _fail(f"optim.frozen[{i}]", pattern, f"a regex over parameter paths ({error})")
    positive_int("checkpoint.every_steps", c.checkpoint.every_steps)
    positive_int("checkpoint.keep", c.checkpoint.keep)
    positive_int("max_consecutive_nonfinite", c.max_consecutive_nonfinite)
    positive_int("log_every_steps", c.log_every_steps)
    positive_int("eval.every_steps", c.eval.every_steps, 0)
    positive_int("eval.batch_size", c.eval.batch_size)
    if c.eval.reduction not in evaluation_methods():
        _fail("eval.reduction", c.eval.reduction, f"one of {evaluation_methods()}")
    from elip_jax.evaluate.evaluators import validate_evals
    validate_evals(c.get("evals", {}))
    if not isinstance(c.seed, int) or not 0 <= c.seed < 2 ** 31:
        _fail("seed", c.seed, "an int in [0, 2**31)")
