"""python -m elip_jax.patch_ranking train-predictor --pretrained DIR --rankings DIR --output DIR
       [--workdir DIR --epochs E --batch-size B --lr LR --holdout FRACTION --eval-rankings DIR ...]

Trains Patch Ranking's predictor (docs/patch_ranking.md#the-predictor) on golden rankings with CLIP frozen, through
the trainer's shell (elip_jax.train: checkpoints, resume, metrics, progress), as its own objective: the batch is
images and the golden-removed patches, the loss KL(target || softmax(predictor logits)) with the target uniform over
the kept patches (patch_ranking.objective). Only params['visual']['reduction_scorer'] is trained: everything else is
an `optim.frozen` group, which also computes no gradient for it (train.step.trained_value_and_grad).

The last `--holdout` fraction of the ranked examples (by split index) is never trained on; the paper's metric, the
overlap of the predicted and golden bottom-k, is reported on it (and on --eval-rankings, golden rankings of other
images such as the test split, when given). The result is an elip_jax folder (checkpoints/folder.py) holding the
whole model with the `patch_ranking` schedule and its predictor, so `python -m elip_jax.evaluate --pretrained OUT
--reduction patch_ranking` serves it. The trainer's workdir (default OUT.workdir) makes a rerun resume.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np

from elip_jax.command_line import ArgumentParser, UsageError

PROG = "python -m elip_jax.patch_ranking train-predictor"
# The paper: Adam, learning rate 1e-3, cosine schedule, 50 epochs.
DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_BATCH = 50, 1e-3, 64
PREDICTOR_PARAMS = "^visual/reduction_scorer/"
FROZEN_ALL_BUT_PREDICTOR = "^(?!visual/reduction_scorer/)"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Train Patch Ranking's predictor on golden rankings, CLIP frozen.")
    parser.add_argument("--pretrained", required=True, help="the model the rankings were made with (a converted "
                        "folder or a training workdir)")
    parser.add_argument("--rankings", required=True, help="golden rankings (python -m elip_jax.patch_ranking golden)")
    parser.add_argument("--output", required=True, help="the elip_jax folder to write (model with its predictor)")
    parser.add_argument("--workdir", default=None, help="the trainer's workdir (default OUTPUT.workdir); rerun to "
                                                        "resume")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="global; rounded up to a multiple of "
                                                                              "the device count")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of the ranked examples (the last by "
                        "index) held out of training for the bottom-k overlap")
    parser.add_argument("--eval-rankings", default=None, help="golden rankings of other images (the test split) to "
                                                              "report the overlap on as well")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    parser.add_argument("--log-every", type=int, default=20, help="steps between logged metrics")
    return parser


# ------------------------------------------------------------------------------------------ the predictor's input

def predictor_logits(module, images, prune_layer: int):
    """CLIP.apply method: the predictor's logits [B, P] from images, on the model's own tokens entering the prune
    layer (the model's schedule must be patch_ranking's, so that the predictor exists)."""
    from elip_jax.patch_ranking.golden import prefix_tokens
    x = prefix_tokens(module, images, prune_layer)
    return module.visual.reduction_scorer.logits(x[:, 1:1 + module.config.num_patches])


def predict_logits(model, variables, images_uint8: np.ndarray, prune_layer: int, batch_size: int = 256):
    """Host logits [N, P] for uint8 images [N, S, S, 3] (for metrics and tests)."""
    import jax
    from elip_jax.data import normalize_images

    @jax.jit
    def logits_of(variables, images):
        return model.apply(variables, normalize_images(images).astype(model.config.compute_dtype), prune_layer,
                           method=predictor_logits)

    out = [np.asarray(logits_of(variables, images_uint8[i:i + batch_size]))
           for i in range(0, len(images_uint8), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.config.num_patches), np.float32)


# ------------------------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class RankedImages:
    """Images (uint8) and their golden-removed patches, in split order, for the examples that have a ranking."""
    indices: np.ndarray  # [N] split indices
    images: np.ndarray  # uint8 [N, S, S, 3]
    removed: np.ndarray  # bool [N, P]

    def take(self, rows) -> "RankedImages":
        return RankedImages(self.indices[rows], self.images[rows], self.removed[rows])

    def __len__(self) -> int:
        return len(self.indices)


def load_ranked_images(reader, image_size: int) -> RankedImages:
    """Reads the images of every ranked example of the rankings' split (the split index is the key)."""
    from elip_jax.data import open_source
    from elip_jax.data.eval_pipeline import PrepareEvalExample
    from elip_jax.patch_ranking.golden_cli import read_images
    meta = reader.meta
    source = open_source(meta["dataset"], meta["split"], meta.get("data_dir"))
    if len(source) != reader.num_examples:
        raise ValueError(f"the rankings were made on {reader.num_examples} examples of {meta['dataset']} "
                         f"{meta['split']}; that split now has {len(source)}")
    indices = np.flatnonzero(reader.available)
    images, _, usable = read_images(source, PrepareEvalExample("image", "label", image_size), 0, reader.num_examples)
    indices = indices[usable[indices]]
    return RankedImages(indices, images[indices], reader.removed_mask(indices))


class ArrayBatches:
    """The trainer's iterator over in-memory arrays: a fresh permutation each epoch (seeded by the epoch), the last
    partial batch of an epoch dropped, batches as global arrays sharded over the batch axis; its state (epoch,
    position) goes into every checkpoint, so a resumed run reads the batches that would have come next."""

    def __init__(self, arrays: dict, batch_size: int, seed: int, sharding):
        self.arrays, self.batch_size, self.seed, self.sharding = arrays, batch_size, seed, sharding
        self.size = len(next(iter(arrays.values())))
        if self.size < batch_size:
            raise ValueError(f"{self.size} training images cannot fill a batch of {batch_size}: lower --batch-size "
                             "or rank more images")
        self.epoch, self.position, self.skipped = 0, 0, {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import jax
        if self.position + self.batch_size > self.size:
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        rows = np.sort(order[self.position:self.position + self.batch_size])
        self.position += self.batch_size
        batch = {name: value[rows] for name, value in self.arrays.items()}
        return {name: jax.make_array_from_callback(value.shape, self.sharding, lambda index, v=value: v[index])
                for name, value in batch.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        pass


class OverlapEvaluator:
    """The trainer's evaluator interface (due, run, name, settings): the bottom-k overlap and the KL loss of the
    predictor on held-out ranked images."""

    def __init__(self, name: str, model, held_out: RankedImages, prune_layer: int, every_steps: int = 0):
        self.name, self.model, self.held_out, self.prune_layer = name, model, held_out, prune_layer
        self.every_steps = every_steps
        self.settings = {"type": "bottom_k_overlap", "examples": len(held_out), "every_steps": every_steps}

    def due(self, step: int, num_steps: int) -> bool:
        return step >= num_steps or bool(self.every_steps) and step % self.every_steps == 0

    def run(self, params) -> dict:
        from elip_jax.patch_ranking.objective import bottom_k_overlap, kl_to_golden
        logits = predict_logits(self.model, {"params": params}, self.held_out.images, self.prune_layer)
        return {"bottom_k_overlap": float(bottom_k_overlap(logits, self.held_out.removed).mean()),
                "kl": float(kl_to_golden(logits, self.held_out.removed))}


class PredictorObjective:
    """The trainer's objective (elip_jax.train.objectives): images and golden-removed patches, KL to the target."""

    name = "patch_ranking_predictor"

    def __init__(self, train_set: RankedImages, evaluation_sets: dict, prune_layer: int):
        self.train_set, self.evaluation_sets, self.prune_layer = train_set, evaluation_sets, prune_layer

    def batch_spec(self, model, batch_size: int) -> dict:
        import jax
        import jax.numpy as jnp
        c = model.config
        return {"images": jax.ShapeDtypeStruct((batch_size, c.image_size, c.image_size, 3), jnp.uint8),
                "removed": jax.ShapeDtypeStruct((batch_size, c.num_patches), jnp.bool_)}

    def loss_fn(self, model, loss):
        from elip_jax.data import normalize_images
        from elip_jax.patch_ranking.objective import kl_to_golden
        prune_layer = self.prune_layer

        def fn(params, batch, rng):
            images = normalize_images(batch["images"]).astype(model.config.compute_dtype)
            logits = model.apply({"params": params}, images, prune_layer, method=predictor_logits)
            return kl_to_golden(logits, batch["removed"])
        return fn

    def open_data(self, config, plan):
        from elip_jax.train import sharding
        batches = ArrayBatches({"images": self.train_set.images, "removed": self.train_set.removed},
                               config.batch_size, config.seed, sharding.batch_sharding(plan.mesh))
        return config.data, batches

    def build_evaluators(self, config, plan, data_config):
        return [OverlapEvaluator(name, plan.model, ranked, self.prune_layer)
                for name, ranked in self.evaluation_sets.items() if len(ranked)]


# ----------------------------------------------------------------------------------------------- the command

def architecture_name(config) -> str:
    """The registered architecture this config is (the trainer's config names one; the weights come from
    --pretrained)."""
    from elip_jax.models.config import ARCHITECTURES
    fields = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "embed_dim")
    for name, candidate in ARCHITECTURES.items():
        if all(getattr(candidate, f) == getattr(config, f) for f in fields):
            return name
    return "ViT-B-16"  # validation only: init_from's own config is the architecture that is built


def trainer_config(args, model_config, settings: dict, num_train: int, devices: int):
    from elip_jax.train.defaults import base_config
    c = base_config()
    batch = -(-args.batch_size // devices) * devices
    steps_per_epoch = max(num_train // batch, 1)
    c.seed = args.seed
    c.model.name = architecture_name(model_config)
    c.model.init_from = os.path.abspath(args.pretrained)
    c.reduction.method = "patch_ranking"
    c.reduction.begin_layers = (int(settings["prune_layer"]),)
    c.reduction.keep = (int(model_config.num_patches) - removed_count(settings),)
    c.batch_size = batch
    c.num_steps = args.epochs * steps_per_epoch
    c.optim.lr = args.lr
    c.optim.warmup_steps = min(steps_per_epoch, c.num_steps // 10)
    c.optim.end_lr_ratio = 0.0
    c.optim.weight_decay = 0.0  # the paper's Adam
    c.optim.b2 = 0.999
    c.optim.frozen = (FROZEN_ALL_BUT_PREDICTOR,)  # CLIP frozen: only the predictor learns
    c.eval.datasets = ()  # the predictor's own evaluator (OverlapEvaluator) instead
    c.checkpoint.every_steps = max(1, min(args.checkpoint_every, c.num_steps))
    c.checkpoint.async_save = False
    c.log_every_steps = max(1, min(args.log_every, c.num_steps))
    return c


def removed_count(settings: dict) -> int:
    size = int(settings["candidate"]) ** 2
    return -(-int(settings["target"]) // size) * size


def check_arguments(args) -> None:
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1; got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0; got {args.lr}")
    if not 0 < args.holdout < 1:
        raise UsageError(f"--holdout must be a fraction in (0, 1); got {args.holdout}")
    for flag, path in (("--pretrained", args.pretrained), ("--rankings", args.rankings)):
        if not os.path.isdir(path):
            raise UsageError(f"{flag} {path!r} is not a folder")
    if args.eval_rankings and not os.path.isdir(args.eval_rankings):
        raise UsageError(f"--eval-rankings {args.eval_rankings!r} is not a folder")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output!r} is a file; it must name a folder")


def check_rankings(reader, model_config, flag: str) -> None:
    meta = reader.meta
    if int(meta["num_patches"]) != model_config.num_patches or int(meta["image_size"]) != model_config.image_size:
        raise UsageError(f"{flag} {reader.folder!r} ranks {meta['num_patches']} patches of {meta['image_size']} px "
                         f"images; --pretrained has {model_config.num_patches} patches of {model_config.image_size} "
                         "px")
    if not reader.available.any():
        raise UsageError(f"{flag} {reader.folder!r} holds no rankings yet (run golden to the end first)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    from elip_jax.patch_ranking.rankings import read_rankings
    reader = read_rankings(args.rankings)
    eval_reader = read_rankings(args.eval_rankings) if args.eval_rankings else None
    if eval_reader is not None and eval_reader.meta["settings"] != reader.meta["settings"]:
        raise UsageError("--eval-rankings was made with other golden settings than --rankings: "
                         f"{eval_reader.meta['settings']} vs {reader.meta['settings']}")
    import jax
    from elip_jax import checkpoints
    from elip_jax.train.loop import train

    model_config = checkpoints.load(args.pretrained)[0].config
    check_rankings(reader, model_config, "--rankings")
    if eval_reader is not None:
        check_rankings(eval_reader, model_config, "--eval-rankings")
    settings = reader.meta["settings"]
    prune_layer = int(settings["prune_layer"])
    ranked = load_ranked_images(reader, model_config.image_size)
    held = max(1, int(round(args.holdout * len(ranked))))
    if len(ranked) - held < 1:
        raise UsageError(f"{len(ranked)} ranked image(s) leave nothing to train on after holding out {held}")
    train_set, held_out = ranked.take(slice(0, len(ranked) - held)), ranked.take(slice(len(ranked) - held, None))
    evaluation_sets = {"holdout": held_out}
    if eval_reader is not None:
        evaluation_sets["eval_rankings"] = load_ranked_images(eval_reader, model_config.image_size)
    config = trainer_config(args, model_config, settings, len(train_set), jax.device_count())
    workdir = args.workdir or os.path.abspath(args.output).rstrip(os.sep) + ".workdir"
    print(f"training the predictor: {len(train_set)} ranked images ({len(held_out)} held out), {config.num_steps} "
          f"steps of {config.batch_size} ({args.epochs} epochs); prune layer {prune_layer}, keep "
          f"{config.reduction.keep[0]} of {model_config.num_patches}; workdir {workdir}", flush=True)
    objective = PredictorObjective(train_set, evaluation_sets, prune_layer)
    summary = train(config, workdir, objective=objective)
    if not summary["finished"]:
        print(f"stopped at step {summary['steps']} of {config.num_steps}; rerun the same command to resume")
        return 3
    results = {name: summary["eval"].get(name, {}) for name in evaluation_sets}
    export(workdir, args, results, summary)
    for name, metrics in results.items():
        print(f"{name}: bottom-k overlap {metrics.get('bottom_k_overlap', float('nan')):.4f} "
              f"({len(evaluation_sets[name])} images, k = {removed_count(settings)}), KL {metrics.get('kl', 0):.4f}")
    print(f"wrote {args.output}: python -m elip_jax.evaluate --pretrained {args.output} --reduction patch_ranking")
    return 0


def export(workdir: str, args, results: dict, summary: dict) -> None:
    """The workdir's final parameters as an elip_jax folder with the patch_ranking schedule."""
    from elip_jax import checkpoints
    model, variables, name = checkpoints.load(workdir)
    provenance = {"trained_by": PROG, "pretrained": os.path.abspath(args.pretrained),
                  "rankings": os.path.abspath(args.rankings), "workdir": os.path.abspath(workdir),
                  "steps": summary["steps"], "bottom_k_overlap": {k: v.get("bottom_k_overlap")
                                                                 for k, v in results.items()}}
    checkpoints.save_pretrained(args.output, variables, model.config, provenance=provenance, overwrite=True,
                                reduction=model.reduction)
