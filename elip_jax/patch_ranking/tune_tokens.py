"""`python -m elip_jax.patch_ranking tune-tokens`: learnable tokens on a few labelled shots
(docs/learnable_tokens.md).

    python -m elip_jax.patch_ranking tune-tokens --pretrained DIR [--predictor DIR] --dataset NAME --shots 16 \
        --visual-tokens 4 [--deep] --text-tokens 4 --output DIR [--steps 200 --batch-size 32 --learning-rate 2e-3]

K shots per class from the train split (the same K for the same --seed), CLIP and the predictor frozen: only the
learnable tokens train (visual tokens after the patches, never pruned; with --deep a fresh set before every block;
text context tokens after SOT), with cross-entropy on the zero-shot logits: exp(logit_scale) * image . class,
the class embeddings built from the dataset's own prompts (the evaluation's) through the text tower, context
included. The image tower runs its schedule: with --predictor, Patch Ranking's pruning, so the tokens learn to
recover what pruning loses.

A small optax loop (Adam, cosine decay), not the trainer: the trainer trains CLIP from a config on image-text
pairs, this trains a handful of vectors on labelled images. Its state (the tokens, Adam's moments, the step) is
an Orbax checkpoint in OUTPUT.partial/, every --checkpoint-every steps: a killed run rerun with the same flags
continues there. The output is an elip_jax folder (checkpoints/folder.py) holding the whole model with its
schedule, tokens and predictor: `python -m elip_jax.evaluate --pretrained OUTPUT` evaluates it as tuned.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from elip_jax.command_line import ArgumentParser, UsageError

PROG = "python -m elip_jax.patch_ranking tune-tokens"
PARTIAL_SUFFIX = ".partial"
REQUEST_FILE = "request.json"


def build_parser():
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", required=True, help="a converted folder or a training workdir (CLIP, frozen)")
    p.add_argument("--predictor", default=None, help="a folder holding a trained predictor (train-predictor): its "
                   "schedule and scorer prune the image tower while the tokens learn")
    p.add_argument("--dataset", required=True, help="TFDS name or 'builtin' (elip_shapes/small, ...)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="train", help="where the shots come from (default train)")
    p.add_argument("--shots", type=int, required=True, help="labelled images per class (K)")
    p.add_argument("--visual-tokens", type=int, default=0, help="learnable visual tokens after the patches")
    p.add_argument("--deep", action="store_true", help="VPT-deep: a fresh set of visual tokens before every block")
    p.add_argument("--text-tokens", type=int, default=0, help="learnable text context tokens after SOT (CoOp)")
    p.add_argument("--output", required=True, help="the tuned model's folder (elip_jax folder format)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Adam's peak rate, cosine decay to 0")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between resumable checkpoints")
    p.add_argument("--seed", type=int, default=0, help="chooses the shots, the batches and the tokens' init")
    p.add_argument("--image-key", default="image")
    p.add_argument("--label-key", default="label")
    return p


def check_arguments(args) -> dict:
    """Everything that needs no model and no compilation: numbers, folders, the dataset and its prompts."""
    from elip_jax import data
    from elip_jax.evaluate import sources
    from elip_jax.evaluate.classnames import zeroshot_prompts
    from elip_jax.fileio import ReplaceRefused, check_replaceable
    from pathlib import Path

    for flag, value, low in (("--shots", args.shots, 1), ("--steps", args.steps, 1),
                             ("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--visual-tokens", args.visual_tokens, 0), ("--text-tokens", args.text_tokens, 0)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if not args.visual_tokens and not args.text_tokens:
        raise UsageError("nothing to tune: give --visual-tokens N and/or --text-tokens M (at least one above 0)")
    from elip_jax.models.config import CONTEXT_LENGTH
    if args.text_tokens > CONTEXT_LENGTH - 2:
        raise UsageError(f"--text-tokens must leave room for SOT and EOT in the {CONTEXT_LENGTH}-token context: at "
                         f"most {CONTEXT_LENGTH - 2}, got {args.text_tokens}")
    if args.deep and not args.visual_tokens:
        raise UsageError("--deep replaces the visual tokens before every block: give --visual-tokens N > 0")
    if not args.learning_rate > 0:
        raise UsageError(f"--learning-rate must be positive, got {args.learning_rate}")
    for flag, path in (("--pretrained", args.pretrained), ("--predictor", args.predictor)):
        if path is not None and not os.path.isdir(path):
            raise UsageError(f"{flag} {path!r} is not a directory")
    from elip_jax.checkpoints.folder import FILES
    try:
        check_replaceable(Path(args.output), args.overwrite, FILES)
    except ReplaceRefused as error:
        if error.others:
            raise UsageError(f"--output {args.output!r} is not a model folder (it holds {error.listed_others()}); "
                             "choose another") from None
        raise UsageError(f"--output {args.output!r} exists: give --overwrite to replace it") from None
    dataset, data_dir = sources.resolve_dataset(args.dataset, args.data_dir)
    data.check_dataset(dataset, args.split, data_dir, {"--image-key": args.image_key, "--label-key": args.label_key})
    prompts = zeroshot_prompts(dataset, sources.tfds_label_names(dataset, data_dir, args.label_key))
    return {"dataset": dataset, "data_dir": data_dir, "prompts": prompts}


def request_of(args) -> dict:
    """What a resumed run must share with the run it continues."""
    keys = ("pretrained", "predictor", "dataset", "split", "shots", "visual_tokens", "deep", "text_tokens", "steps",
            "batch_size", "learning_rate", "seed", "label_key")
    return {k: (os.path.abspath(getattr(args, k)) if k in ("pretrained", "predictor") and getattr(args, k)
                else getattr(args, k)) for k in keys}


def tuned_model(model, variables, visual_tokens: int, deep: bool, text_tokens: int, seed: int):
    """(model, variables) with the requested learnable tokens (freshly initialised with `seed` unless `variables`
    already holds tokens of these shapes), the same schedule otherwise."""
    from elip_jax.checkpoints.params import fit_variables
    from elip_jax.models.clip import CLIP, schedule_for
    config = model.config.replace(deep_visual_tokens=deep, text_context_tokens=text_tokens)
    schedule = schedule_for(config, {**model.reduction.options(), "protected": visual_tokens})
    new_model = CLIP(config, schedule)
    return new_model, fit_variables(new_model, variables, seed)


def token_names(model) -> list:
    """The learnable tokens' parameter paths: neither the backbone's nor the reduction method's."""
    from elip_jax.checkpoints.overlay import _backbone_shapes, method_parameter_names
    from elip_jax.checkpoints.params import _abstract_params, flat_shapes
    backbone, method = _backbone_shapes(model.config), set(method_parameter_names(model))
    return sorted(k for k in flat_shapes(_abstract_params(model)) if k not in backbone and k not in method)


def batch_indices(step: int, batch_size: int, count: int, seed: int) -> np.ndarray:
    """Shot positions of one step: a fresh seeded permutation every epoch, so a resumed run sees the same batches."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // count
    perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(count) for e in np.unique(epochs)}
    return np.array([perms[int(e)][p % count] for e, p in zip(epochs, positions)])


class Tuner:
    """The compiled pieces: logits of images against the classes, the loss and one Adam step on the tokens."""

    def __init__(self, model, variables, prompts, names: Sequence[str], learning_rate: float, steps: int):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import traverse_util
        from elip_jax import data
        from elip_jax.tokenizer import tokenize

        flat = traverse_util.flatten_dict(variables["params"], sep="/")
        self.trainable = {k: flat[k] for k in names}
        frozen = {k: v for k, v in flat.items() if k not in self.trainable}
        tokens = jnp.asarray(tokenize(prompts.prompts(), context_length=model.config.context_length))
        num_classes = prompts.num_classes
        self.optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

        def params_of(trainable):
            return {"params": traverse_util.unflatten_dict({**frozen, **trainable}, sep="/")}

        def class_embeddings(params):
            text = model.apply(params, tokens, method=model.encode_text, normalize=True)
            per_class = text.reshape(num_classes, -1, text.shape[-1]).mean(axis=1)
            return per_class / jnp.linalg.norm(per_class, axis=-1, keepdims=True)

        def logits(trainable, images):
            params = params_of(trainable)
            pixels = data.normalize_images(images)
            image = model.apply(params, pixels, method=model.encode_image, normalize=True)
            return jnp.exp(params["params"]["logit_scale"]) * image @ class_embeddings(params).T

        def loss(trainable, images, classes):
            return optax.softmax_cross_entropy_with_integer_labels(logits(trainable, images), classes).mean()

        def step(trainable, opt_state, images, classes):
            value, grads = jax.value_and_grad(loss)(trainable, images, classes)
            updates, opt_state = self.optimizer.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, value

        self.params_of = params_of
        self.logits = jax.jit(logits)
        self.loss = jax.jit(loss)
        self.step = jax.jit(step, donate_argnums=(0, 1))

    def evaluate(self, trainable, shots: dict, batch_size: int) -> tuple[float, float]:
        """(mean loss, top-1 accuracy) on every shot."""
        losses, hits = [], []
        for i in range(0, len(shots["classes"]), batch_size):
            images, classes = shots["images"][i:i + batch_size], shots["classes"][i:i + batch_size]
            logits = np.asarray(self.logits(trainable, images))
            losses.append(float(self.loss(trainable, images, classes)) * len(classes))
            hits.append(int((logits.argmax(-1) == classes).sum()))
        count = len(shots["classes"])
        return sum(losses) / count, sum(hits) / count


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    checked = check_arguments(args)
    summary = tune(args, checked)
    print(json.dumps(summary, indent=2))
    return 0


def tune(args, checked) -> dict:
    import jax
    import orbax.checkpoint as ocp
    from tqdm.auto import tqdm
    from elip_jax import checkpoints
    from elip_jax.checkpoints.overlay import OverlayError, overlay
    from elip_jax.fileio import atomic_write_json
    from elip_jax.patch_ranking.few_shot import load_shots

    prompts = checked["prompts"]
    try:
        model, variables, name = checkpoints.load(args.pretrained)
        if args.predictor:
            model, variables = overlay(model, variables, args.predictor)
    except OverlayError as error:
        raise UsageError(str(error)) from None
    model, variables = tuned_model(model, variables, args.visual_tokens, args.deep, args.text_tokens, args.seed)
    shots = load_shots(checked["dataset"], args.split, data_dir=checked["data_dir"], shots=args.shots,
                       num_classes=prompts.num_classes, seed=args.seed, image_size=model.config.image_size,
                       image_key=args.image_key, label_key=args.label_key, label_to_class=prompts.label_to_class)
    tuner = Tuner(model, variables, prompts, token_names(model), args.learning_rate, args.steps)
    trainable = tuner.trainable
    loss_before, accuracy_before = tuner.evaluate(trainable, shots, args.batch_size)

    partial = os.path.abspath(args.output.rstrip(os.sep) + PARTIAL_SUFFIX)
    request = request_of(args)
    os.makedirs(partial, exist_ok=True)
    request_path = os.path.join(partial, REQUEST_FILE)
    if os.path.exists(request_path):
        with open(request_path) as f:
            earlier = json.load(f)
        if earlier != request:
            changed = sorted(k for k in request if earlier.get(k) != request[k])
            raise UsageError(f"{partial} holds a run with other flags ({', '.join(changed)}): rerun with its flags "
                             "to continue it, or remove the folder to start over")
    else:
        atomic_write_json(request_path, request)
    manager = ocp.CheckpointManager(os.path.join(partial, "state"),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    opt_state = tuner.optimizer.init(trainable)
    start = 0
    if manager.latest_step() is not None:
        start = manager.latest_step()
        target = {"trainable": trainable, "opt_state": opt_state}
        restored = manager.restore(start, args=ocp.args.StandardRestore(jax.tree_util.tree_map(
            ocp.utils.to_shape_dtype_struct, target)))
        trainable, opt_state = restored["trainable"], restored["opt_state"]

    losses = []
    with tqdm(total=args.steps, initial=start, desc="tune-tokens", unit="step") as bar:
        for step in range(start, args.steps):
            idx = batch_indices(step, args.batch_size, len(shots["classes"]), args.seed)
            trainable, opt_state, value = tuner.step(trainable, opt_state, shots["images"][idx], shots["classes"][idx])
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
                manager.save(step + 1, args=ocp.args.StandardSave({"trainable": trainable, "opt_state": opt_state}))
                losses.append(round(float(value), 6))
                bar.set_postfix(loss=f"{float(value):.4f}")
            bar.update(1)
    manager.wait_until_finished()
    manager.close()
    loss_after, accuracy_after = tuner.evaluate(trainable, shots, args.batch_size)

    summary = {"shots_per_class": args.shots, "classes": prompts.num_classes, "shot_examples": len(shots["index"]),
               "visual_tokens": args.visual_tokens, "deep": args.deep, "text_tokens": args.text_tokens,
               "steps": args.steps, "resumed_at_step": start or None,
               "shots_loss_before": loss_before, "shots_loss_after": loss_after,
               "shots_accuracy_before": accuracy_before, "shots_accuracy_after": accuracy_after,
               "loss_at_checkpoints": losses,
               "reduction": model.reduction.options()}
    provenance = {"tune_tokens": {**request, **summary}, "base": name}
    params = jax.device_get(tuner.params_of(trainable))
    checkpoints.save_pretrained(args.output, params, model.config, provenance=json.loads(json.dumps(provenance)),
                                overwrite=args.overwrite, reduction=model.reduction)
    shutil.rmtree(partial)
    return summary
