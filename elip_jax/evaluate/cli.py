"""`python -m elip_jax.evaluate`: zero-shot classification / retrieval of a model on a TFDS dataset.

    python -m elip_jax.evaluate --pretrained DIR --dataset imagenet2012 --split validation \
        --task zeroshot_classification --output results.json [--reduction evit --keep-ratios 0.9,0.65,0.4]
    python -m elip_jax.evaluate --model tiny --dataset builtin --task zeroshot_retrieval --output r.json
    python -m elip_jax.evaluate --pretrained DIR --dataset cifar10 --task zeroshot_classification \
        --reduction evit --reduction-sweep "1.0,1.0,1.0;0.9,0.65,0.4;0.7,0.5,0.3" --output sweep.json
    python -m elip_jax.evaluate --pretrained DIR --dataset cifar10 --task zeroshot_classification \
        --reduction tome --reduction-sweep "0;4;9;16d" --output tome_sweep.json
    python -m elip_jax.evaluate --pretrained DIR --dataset cifar10 --task zeroshot_classification \
        --reduction random --begin-layers 3 --keep-ratios 0.61 --seed 1 --output random_s1.json

A sweep varies what the method's schedule is made of: keep ratios for the methods that prune between blocks
(';'-separated schedules of ','-separated ratios), r for tome (';'-separated entries, each an int r merged in
every block, an int followed by 'd' for r falling linearly from 2r to 0 over the blocks, or ','-separated
per-block values; '0' is the unpruned model).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence


from elip_jax.command_line import ArgumentParser, UsageError, check_output_file, run_command
from elip_jax.evaluate import evaluator, sources
from elip_jax.evaluate.classnames import known_datasets, zeroshot_prompts
from elip_jax.evaluate.results import (TASKS, atomic_write, result_record, sweep_markdown,
                                      write_json)
from elip_jax.evaluate.sharding import check_batch_size, data_mesh, is_main_process
from elip_jax.reduction import evaluation_methods, get_method
from elip_jax.reduction.registry import MERGE_ONE, SWEEP_R

MAX_SEED = 2 ** 32 - 1  # jax.random.PRNGKey takes 32 bits here (larger seeds would wrap around silently)


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


def parse_ints(text: Optional[str], flag: str = "the list"):
    return parse_list(text, int, flag, "2,4,10")


def parse_floats(text: Optional[str], flag: str = "the list"):
    return parse_list(text, float, flag, "0.9,0.65,0.4")


def parse_list(text: Optional[str], kind, flag: str, example: str):
    if not text:
        return None
    try:
        return tuple(kind(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated {kind.__name__}s such as {example}; got {text!r}") from None



def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m elip_jax.evaluate", description=__doc__,
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
    p.add_argument("--reduction", default="none", choices=evaluation_methods(),
                   help="token reduction in the image tower at evaluation. Text-guided methods (elip, "
                        "elip_inline) get no guide at evaluation, so they do not prune (recorded as "
                        "prunes_at_eval: false); random keeps a random subset of each image's patches, drawn "
                        "from --seed and the image's index in the split")
    p.add_argument("--predictor", default=None,
                   help="a folder holding a trained predictor for --reduction (from `python -m "
                        "elip_jax.patch_ranking train-predictor` or tune-tokens): its scorer's parameters, and its "
                        "learnable tokens if it has them, are laid over the model of --pretrained; its saved "
                        "schedule is used unless --keep-ratios/--begin-layers are given")
    p.add_argument("--keep-ratios", default=None, help="comma-separated keep ratios, e.g. 0.9,0.65,0.4")
    p.add_argument("--begin-layers", default=None, help="comma-separated blocks to prune before, e.g. 2,4,10")
    p.add_argument("--drop-merged", action="store_true",
                   help="for a method that fuses each stage's pruned tokens into one merged token (evit): drop them "
                        "instead (EViT without its fused token)")
    p.add_argument("--reduction-sweep", default=None,
                   help="';'-separated schedules for --reduction (default evit): keep ratios such as "
                        "'1.0,1.0,1.0;0.9,0.65,0.4', or for tome values of r such as '0;4;9;16d' (d: decreasing). "
                        "Writes one result per schedule and a markdown table")
    p.add_argument("--image-key", default="image")
    p.add_argument("--label-key", default="label")
    p.add_argument("--text-key", default=None, help="caption feature for retrieval ('captions/text' for COCO)")
    p.add_argument("--image-size", type=int, default=None, help="override the model's image size (--model only)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"initialisation seed for --model, and the seed of the per-example keys of a method that "
                        f"draws at evaluation (random: image i keeps the subset fold_in(PRNGKey(seed), i) draws, "
                        f"whatever the batch size or device count); an int in [0, {MAX_SEED}]")
    return p


def check_arguments(args, mesh) -> dict:
    """Everything about the request that needs no model and no compilation, in seconds, before anything compiles:
    the output files, the dataset (name, data directory, split, feature keys), the class names, the batch.

    Returns what the run uses: the dataset's TFDS name and folder, the batch size and the markdown path."""
    from elip_jax import data

    if not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed must be an int in [0, {MAX_SEED}] (a 32-bit key seed); got {args.seed}")
    if args.image_size and args.pretrained:
        raise UsageError("--image-size applies to --model only (a checkpoint fixes its own image size)")
    markdown = os.path.splitext(args.output)[0] + ".md" if args.reduction_sweep else None
    check_output_file(args.output, "--output")
    if markdown:
        check_output_file(markdown, "--output (the sweep's table beside it)")
    keep_ratios = parse_floats(args.keep_ratios, "--keep-ratios")
    begin_layers = parse_ints(args.begin_layers, "--begin-layers")
    schedules = parse_sweep(args.reduction_sweep, sweep_method(args)) if args.reduction_sweep else None
    if schedules and args.begin_layers and get_method(sweep_method(args)).sweep_parameter == SWEEP_R:
        raise UsageError(f"--begin-layers does not apply to {sweep_method(args)}, which merges inside every block")
    if args.drop_merged:
        if args.reduction_sweep:
            raise UsageError("--drop-merged applies to one evaluation, not to --reduction-sweep")
        if get_method(args.reduction).removal != MERGE_ONE:
            raise UsageError(f"--drop-merged applies to methods that fuse the pruned tokens into one merged token; "
                             f"--reduction {args.reduction} does not")
    if args.predictor and not os.path.isdir(args.predictor):
        raise UsageError(f"--predictor {args.predictor!r} is not a directory (a folder written by train-predictor "
                         "or tune-tokens)")
    check_batch_size(args.batch_size, mesh)

    dataset, data_dir = sources.resolve_dataset(args.dataset, args.data_dir)
    keys = {"--image-key": args.image_key}
    if args.task == "zeroshot_classification":
        keys["--label-key"] = args.label_key
    else:
        keys["--text-key"] = args.text_key or sources.default_text_key(dataset)
    num_examples = data.check_dataset(dataset, args.split, data_dir, keys)
    if args.task == "zeroshot_classification":
        zeroshot_prompts(dataset, sources.tfds_label_names(dataset, data_dir, args.label_key))

    # A split smaller than the batch is padded (masked rows, nothing repeated): a smaller batch does the same
    # work without the padding, and compiles for a smaller shape.
    devices = mesh.devices.size
    batch_size = min(args.batch_size, -(-num_examples // devices) * devices)
    return {"dataset": dataset, "data_dir": data_dir, "batch_size": batch_size, "markdown": markdown,
            "keep_ratios": keep_ratios, "begin_layers": begin_layers, "schedules": schedules}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    mesh = data_mesh()
    checked = check_arguments(args, mesh)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    model, variables, name = load_model(args.pretrained, model_name=args.model, seed=args.seed, **overrides)
    reduction = {"method": sweep_method(args) if checked["schedules"] else args.reduction}
    if not checked["schedules"]:  # a sweep sets its own keep ratios and begin layers per entry
        if checked["keep_ratios"]:
            reduction["keep_ratios"] = checked["keep_ratios"]
        if checked["begin_layers"]:
            reduction["begin_layers"] = checked["begin_layers"]
        if args.drop_merged:
            reduction["merge"] = False
    if args.predictor:
        model, variables = with_predictor(model, variables, args.predictor, reduction)
    else:
        reduced = evaluator.with_reduction(model, keeping_schedule(model, reduction))
        if args.pretrained:  # a --model is random throughout: its scorer may be too (smoke tests)
            check_learned_parameters(reduced, variables)
        model, variables = evaluator.with_reduction(model, reduced.reduction, variables)
    common = dict(task=args.task, dataset=checked["dataset"], split=args.split, data_dir=checked["data_dir"],
                  batch_size=checked["batch_size"], mesh=mesh, image_key=args.image_key,
                  label_key=args.label_key, text_key=args.text_key, seed=args.seed)
    record_args = dict(dataset=args.dataset, model=name, task=args.task, split=args.split,
                       pretrained=args.pretrained, **({"predictor": args.predictor} if args.predictor else {}))

    if checked["schedules"]:
        method = sweep_method(args)
        outcomes = evaluator.reduction_sweep(model, variables, checked["schedules"], method=method,
                                             begin_layers=checked["begin_layers"], **common)
        typed = evaluator.typed_keep_schedules(args.reduction_sweep)
        records = [{**record(o, record_args), "keep_ratios_typed": t} for o, t in zip(outcomes, typed)]
        payload = {**record_args, "sweep": records}
        if is_main_process():
            table = sweep_markdown(records, title=sweep_title(args, name, method))
            write_json(args.output, payload)
            atomic_write(checked["markdown"], table)
            print(table)
        return payload

    payload = record(evaluator.evaluate(model, variables, **common), record_args)
    if is_main_process():
        write_json(args.output, payload)
        print({k: payload[k] for k in ("dataset", "model", "task", "metrics", "flops_per_image",
                                       "examples_per_second")})
    return payload


def keeping_schedule(model, reduction: dict):
    """The model's own saved schedule when the request names its method and nothing else (a predictor's layer and
    keep count were chosen when it was trained); else the request."""
    if set(reduction) == {"method"} and reduction["method"] == model.reduction.method:
        return model.reduction
    return reduction


def with_predictor(model, variables, directory: str, reduction: dict):
    """--predictor DIR laid over the model (elip_jax.checkpoints.overlay): DIR's saved schedule when the request
    names only its method, else the request's options; one-line errors."""
    from elip_jax.checkpoints.overlay import OverlayError, overlay
    try:
        return overlay(model, variables, directory, reduction)
    except OverlayError as error:
        raise UsageError(str(error)) from None


def check_learned_parameters(model, variables):
    """A method whose scorer is learned needs its trained parameters: evaluating a freshly initialised one would
    report a random predictor's accuracy as the method's."""
    from elip_jax.checkpoints.overlay import method_parameter_names
    from elip_jax.checkpoints.params import flat_shapes
    owned = method_parameter_names(model)
    if not owned:
        return
    held = flat_shapes(variables.get("params", variables))
    if any(k not in held for k in owned):
        raise UsageError(f"--reduction {model.reduction.method} needs its trained parameters ({owned[0]} ...): "
                         "give --predictor DIR, or a --pretrained folder that holds them")


def sweep_method(args) -> str:
    return "evit" if args.reduction == "none" else args.reduction


def parse_sweep(text: str, method: str) -> list:
    """The sweep's schedules: keep-ratio tuples, or for a method whose sweep varies r (tome) one dict of
    make_schedule options per entry ('9' -> r=9, '16d' -> r=16 decreasing, '4,4,2,0' -> one r per block)."""
    if get_method(method).sweep_parameter != SWEEP_R:
        return evaluator.parse_keep_schedules(text)
    entries = evaluator.typed_keep_schedules(text)
    if not entries:
        raise UsageError(f"the {method} sweep needs at least one value of r, e.g. '0;4;9;16d'")
    options = []
    for entry in entries:
        try:
            if entry.endswith("d"):
                options.append({"r": int(entry[:-1]), "decreasing": True})
            elif "," in entry:
                options.append({"r": tuple(int(v) for v in entry.split(","))})
            else:
                options.append({"r": int(entry)})
        except ValueError:
            raise UsageError(f"a {method} sweep entry is an int r ('9'), r falling to 0 ('16d') or one int per "
                             f"block ('4,4,2,0'); got {entry!r}") from None
    return options


def sweep_title(args, model_name: str, method: str) -> dict:
    """What the sweep's table says it measured: model, dataset, split, task, method and the schedules as typed."""
    return {"model": model_name, "dataset": args.dataset, "split": args.split, "task": args.task,
            "method": method,
            ("r (as typed)" if get_method(method).sweep_parameter == SWEEP_R else "keep ratios (as typed)"):
                args.reduction_sweep,
            **({"begin layers": args.begin_layers} if args.begin_layers else {}),
            **({"seed": args.seed} if get_method(method).evaluation_needs_keys else {}),
            **({"predictor": args.predictor} if args.predictor else {})}


def run(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: bad input is one `error: ...` line and exit code 2 (elip_jax.command_line)."""
    return run_command(main, argv)


def record(outcome: dict, record_args: dict) -> dict:
    record_args = dict(record_args)
    predictor = record_args.pop("predictor", None)  # the model is still --pretrained's backbone: said beside it
    return result_record(metrics=outcome["metrics"], reduction=outcome["reduction"],
                         flops_per_image=outcome["flops_per_image"],
                         examples_per_second=outcome["examples_per_second"],
                         num_examples=outcome["num_examples"],
                         extra={"skipped_examples": outcome.get("skipped_examples", {}),
                                **({"predictor": predictor} if predictor else {})}, **record_args)
