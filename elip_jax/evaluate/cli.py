"""`python -m elip_jax.evaluate`: zero-shot classification / retrieval of a model on a TFDS dataset.

    python -m elip_jax.evaluate --pretrained DIR --dataset imagenet2012 --split validation \
        --task zeroshot_classification --output results.json [--reduction evit --keep-ratios 0.9,0.65,0.4]
    python -m elip_jax.evaluate --model tiny --dataset builtin --task zeroshot_retrieval --output r.json
    python -m elip_jax.evaluate --pretrained DIR --dataset cifar10 --task zeroshot_classification \
        --reduction evit --reduction-sweep "1.0,1.0,1.0;0.9,0.65,0.4;0.7,0.5,0.3" --output sweep.json
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import jax

from elip_jax.evaluate import evaluator
from elip_jax.evaluate.classnames import known_datasets
from elip_jax.evaluate.results import TASKS, result_record, sweep_markdown, atomic_write, write_json
from elip_jax.evaluate.sharding import data_mesh, is_main_process

EVAL_REDUCTIONS = ("none", "evit", "elip", "elip_inline")


def load_model(pretrained_or_workdir: Optional[str] = None, *, model_name: Optional[str] = None, seed: int = 0,
               **overrides):
    """(model, variables, description) from a training workdir (its newest restorable checkpoint), a converted
    checkpoint directory, or a random-init model by name: elip_jax.checkpoints.load, the one loader."""
    from elip_jax import checkpoints
    from elip_jax.models.config import get_config

    if (pretrained_or_workdir is None) == (model_name is None):
        raise ValueError("give exactly one of a pretrained directory (--pretrained) or a model name (--model)")
    if pretrained_or_workdir is not None:
        if not os.path.isdir(pretrained_or_workdir):
            raise ValueError(f"--pretrained must be a directory written by `python -m elip_jax.convert` or a "
                             f"training workdir; {pretrained_or_workdir!r} is not a directory")
        return checkpoints.load(pretrained_or_workdir, **overrides)
    get_config(model_name)  # an unknown name: the error lists the known ones
    return checkpoints.load(model_name, seed=seed, **overrides)


def random_variables(model, seed: int = 0):
    """Randomly initialised parameters (smoke tests and throughput benchmarks)."""
    import jax.numpy as jnp

    size = model.config.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, model.config.context_length), jnp.int32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), images, tokens)


def parse_ints(text: Optional[str]):
    return None if not text else tuple(int(x) for x in text.split(","))


def parse_floats(text: Optional[str]):
    return None if not text else tuple(float(x) for x in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m elip_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", help="a directory from `python -m elip_jax.convert` (Orbax + config.json), "
                        "or a training workdir (its latest checkpoint)")
    source.add_argument("--model", help="architecture name, randomly initialised (smoke tests, benchmarks)")
    p.add_argument("--dataset", required=True,
                   help=f"TFDS name, or 'builtin'. Class names known for: {', '.join(known_datasets())}; "
                        "retrieval: coco_captions, builtin, or any dataset with a caption feature (--text-key)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--output", required=True, help="result JSON (a sweep also writes a .md table beside it)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256, help="global batch, a multiple of the device count")
    p.add_argument("--reduction", default="none", choices=EVAL_REDUCTIONS,
                   help="token reduction in the image tower at evaluation. elip/elip_inline are text-guided and "
                        "get no guide at evaluation, so they do not prune (recorded as prunes_at_eval: false)")
    p.add_argument("--keep-ratios", default=None, help="comma-separated keep ratios, e.g. 0.9,0.65,0.4")
    p.add_argument("--begin-layers", default=None, help="comma-separated blocks to prune before, e.g. 2,4,10")
    p.add_argument("--reduction-sweep", default=None,
                   help="';'-separated keep schedules for --reduction (default evit), e.g. "
                        "'1.0,1.0,1.0;0.9,0.65,0.4': writes one result per schedule and a markdown table")
    p.add_argument("--image-key", default="image")
    p.add_argument("--label-key", default="label")
    p.add_argument("--text-key", default=None, help="caption feature for retrieval ('captions/text' for COCO)")
    p.add_argument("--image-size", type=int, default=None, help="override the model's image size (--model only)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for --model")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    if overrides and args.pretrained:
        raise ValueError("--image-size applies to --model only (a checkpoint fixes its own image size)")
    model, variables, name = load_model(args.pretrained, model_name=args.model, seed=args.seed, **overrides)
    mesh = data_mesh()
    common = dict(task=args.task, dataset=args.dataset, split=args.split, data_dir=args.data_dir,
                  batch_size=args.batch_size, mesh=mesh, image_key=args.image_key, label_key=args.label_key,
                  text_key=args.text_key)
    record_args = dict(dataset=args.dataset, model=name, task=args.task, split=args.split,
                       pretrained=args.pretrained)

    if args.reduction_sweep:
        method = "evit" if args.reduction == "none" else args.reduction
        outcomes = evaluator.reduction_sweep(model, variables, evaluator.parse_keep_schedules(args.reduction_sweep),
                                             method=method, begin_layers=parse_ints(args.begin_layers), **common)
        records = [record(o, record_args) for o in outcomes]
        payload = {**record_args, "sweep": records}
        if is_main_process():
            write_json(args.output, payload)
            atomic_write(os.path.splitext(args.output)[0] + ".md", sweep_markdown(records))
            print(sweep_markdown(records))
        return payload

    reduction = {"method": args.reduction}
    if args.keep_ratios:
        reduction["keep_ratios"] = parse_floats(args.keep_ratios)
    if args.begin_layers:
        reduction["begin_layers"] = parse_ints(args.begin_layers)
    model = evaluator.with_reduction(model, reduction)
    payload = record(evaluator.evaluate(model, variables, **common), record_args)
    if is_main_process():
        write_json(args.output, payload)
        print({k: payload[k] for k in ("dataset", "model", "task", "metrics", "flops_per_image",
                                       "examples_per_second")})
    return payload


def record(outcome: dict, record_args: dict) -> dict:
    return result_record(metrics=outcome["metrics"], reduction=outcome["reduction"],
                         flops_per_image=outcome["flops_per_image"],
                         examples_per_second=outcome["examples_per_second"],
                         num_examples=outcome["num_examples"],
                         extra={"skipped_examples": outcome.get("skipped_examples", {})}, **record_args)
