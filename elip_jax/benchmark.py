"""FLOPs, memory and speed of every token-reduction method against the unpruned model, in one run.

    python -m elip_jax.benchmark --model ViT-B-16 --methods none,elip,elip_inline,evit,random,tome \
        --batch 8 --json out/bench.json --markdown BENCHMARKS.md

For each method it compiles three programs and reads XLA's own cost and memory analysis:
  image_forward  the image encoder's forward (methods that prune with a guide get a fixed one, those that prune
                 with a key a fixed key);
  image_train    jax.grad of a scalar of the image features w.r.t. all vision-tower parameters, guided;
  full_step      jax.grad of the CLIP contrastive loss of the training forward w.r.t. all parameters;
then times image_train and full_step (median of --repeats runs, the methods interleaved so that drift in
machine load hits all of them alike). Every number also comes as a ratio against `none` from the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

import elip_jax
from elip_jax.command_line import ArgumentParser, check_output_file, run_command
from elip_jax.checkpoints import fit_variables
from elip_jax.accounting import analytic_image_flops, formulas, tokens_per_block, xla_flops, xla_temp_bytes
from elip_jax.reduction import registered_methods
from elip_jax.reduction.registry import GUIDE, RNG
from elip_jax.train.losses import clip_loss
from elip_jax.fileio import atomic_write_text as atomic_write

SCHEMA_VERSION = 1
PROGRAMS = ("image_forward", "image_train", "full_step")
TIMED_PROGRAMS = ("image_train", "full_step")
MEMORY_PROGRAMS = ("image_train", "full_step")
SOT, EOT = 49406, 49407  # CLIP BPE start/end-of-text ids
CAPTION_LENGTH = 20  # synthetic captions: SOT, 18 word ids, EOT, then padding

# Targets for ViT-B/16 at 224 px, image_train against none (docs/elip.md: what it saves; the efficient variants).
FLOPS_TARGETS = {"elip": 0.90, "elip_inline": 0.74, "evit": 0.73, "tome": 0.73}
MEMORY_TARGET = 0.80
TIME_TOLERANCE = 0.10  # measured time ratio within 10 % of the XLA FLOPs ratio


@dataclasses.dataclass
class Inputs:
    """The fixed inputs every program of every method sees (same values, so ratios compare like with like)."""

    images: jax.Array  # [B, S, S, 3]
    tokens: jax.Array  # [B, context_length] int32
    guide: jax.Array  # [B, E] L2-normalised stand-in for the paired text features
    rng: jax.Array  # the step key (random masking)
    probe: jax.Array  # [E] fixed random direction: image_train differentiates sum(features @ probe)


def make_inputs(config: elip_jax.CLIPConfig, batch: int, seed: int = 0) -> Inputs:
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    images = jax.random.normal(keys[0], (batch, config.image_size, config.image_size, 3), jnp.float32)
    words = jax.random.randint(keys[1], (batch, CAPTION_LENGTH - 2), 1, SOT, jnp.int32)
    captions = jnp.concatenate([jnp.full((batch, 1), SOT, jnp.int32), words, jnp.full((batch, 1), EOT, jnp.int32)],
                               axis=1)
    tokens = jnp.pad(captions, ((0, 0), (0, config.context_length - CAPTION_LENGTH)))
    guide = jax.random.normal(keys[2], (batch, config.embed_dim), jnp.float32)
    guide = guide / jnp.linalg.norm(guide, axis=-1, keepdims=True)
    probe = jax.random.normal(keys[4], (config.embed_dim,), jnp.float32)
    return Inputs(images, tokens, guide, keys[3], probe)


def encoder_extras(model: elip_jax.CLIP, inputs: Inputs) -> dict:
    """What makes each method prune in `encode_image`: a guide for those that need one, a key for those that
    need a key, nothing for the others (the registered method's `trigger`)."""
    trigger = model.reduction.spec.trigger
    return {GUIDE: {"guide": inputs.guide}, RNG: {"rng": inputs.rng}}.get(trigger, {})


def image_forward_program(model: elip_jax.CLIP) -> Callable:
    def image_forward(variables, images, extras):
        return model.apply(variables, images, method=model.encode_image, **extras)
    return image_forward


def image_train_program(model: elip_jax.CLIP) -> Callable:
    """Gradient of sum(image_features @ probe) w.r.t. every vision-tower parameter."""
    def image_train(visual_params, other_params, images, extras, probe):
        def objective(visual):
            variables = {"params": {**other_params, "visual": visual}}
            features = model.apply(variables, images, method=model.encode_image, **extras)
            return jnp.sum(features @ probe)
        return jax.grad(objective)(visual_params)
    return image_train


def full_step_program(model: elip_jax.CLIP) -> Callable:
    """Gradient of the contrastive loss of the training forward (both towers) w.r.t. all parameters."""
    def full_step(params, images, tokens, rng):
        def loss(p):
            return clip_loss(*model.apply({"params": p}, images, tokens, rng=rng))
        return jax.grad(loss)(params)
    return full_step


def program_arguments(name: str, model: elip_jax.CLIP, variables: dict, inputs: Inputs) -> tuple:
    params = variables["params"]
    extras = encoder_extras(model, inputs)
    if name == "image_forward":
        return variables, inputs.images, extras
    if name == "image_train":
        others = {k: v for k, v in params.items() if k != "visual"}
        return params["visual"], others, inputs.images, extras, inputs.probe
    return params, inputs.images, inputs.tokens, inputs.rng


PROGRAM_BUILDERS = {"image_forward": image_forward_program, "image_train": image_train_program,
                    "full_step": full_step_program}


@dataclasses.dataclass
class CompiledProgram:
    compiled: Any
    arguments: tuple
    compile_s: float


def compile_program(name: str, model: elip_jax.CLIP, variables: dict, inputs: Inputs) -> CompiledProgram:
    arguments = program_arguments(name, model, variables, inputs)
    start = time.perf_counter()
    compiled = jax.jit(PROGRAM_BUILDERS[name](model)).lower(*arguments).compile()
    return CompiledProgram(compiled, arguments, time.perf_counter() - start)


def run_once(program: CompiledProgram) -> float:
    start = time.perf_counter()
    jax.block_until_ready(program.compiled(*program.arguments))
    return time.perf_counter() - start


def time_interleaved(programs: dict, repeats: int, warmup: int) -> dict:
    """Wall times {key: [seconds]} of each program, running the programs in turn inside each repeat, so that
    a change in machine load during the run affects every method alike."""
    for program in programs.values():
        for _ in range(warmup):
            run_once(program)
    times = {key: [] for key in programs}
    for _ in range(repeats):
        for key, program in programs.items():
            times[key].append(run_once(program))
    return times


def ratio(value: Optional[float], baseline: Optional[float]) -> Optional[float]:
    if value is None or not baseline:
        return None
    return value / baseline


def ratios_against(result: dict, baseline: dict) -> dict:
    """Every scalar metric of `result` divided by the same metric of `baseline` (the `none` method)."""
    out = {"analytic_flops": {k: ratio(result["analytic_flops"][k], baseline["analytic_flops"][k])
                              for k in ("main_path", "forward", "image_train")},
           "xla_flops": {k: ratio(result["xla_flops"][k], baseline["xla_flops"][k]) for k in PROGRAMS},
           "xla_temp_bytes": {k: ratio(result["xla_temp_bytes"][k], baseline["xla_temp_bytes"][k])
                              for k in MEMORY_PROGRAMS}}
    if "time_s" in result:
        out["time_s"] = {k: ratio(timing_of(result, k), timing_of(baseline, k)) for k in TIMED_PROGRAMS}
        # On a shared machine the fastest run is the least disturbed one: a second opinion on the median.
        out["time_s_min"] = {k: ratio(timing_of(result, k, "min"), timing_of(baseline, k, "min"))
                             for k in TIMED_PROGRAMS}
    return out


def timing_of(result: dict, program: str, statistic: str = "median") -> Optional[float]:
    timing = result["time_s"].get(program)
    return None if timing is None else timing[statistic]


def schedule_summary(model: elip_jax.CLIP) -> dict:
    r = model.reduction
    summary = {"method": r.method, "begin_layers": list(r.begin_layers), "keep": list(r.keep), "merge": r.merge,
               "mix": r.mix}
    if r.r:
        summary["r"] = list(r.r)
    if r.protected:
        summary["protected"] = r.protected
    return summary


def evaluate_targets(methods: dict, model_name: str, config: elip_jax.CLIPConfig) -> dict:
    """Checks the targets on image_train against none. They are stated for ViT-B/16 at 224 px;
    `applies` says whether this run is that setting."""
    checks = {}
    for method, result in methods.items():
        if method not in FLOPS_TARGETS:
            continue
        r = result["ratios"]
        flops, memory = r["xla_flops"]["image_train"], r["xla_temp_bytes"]["image_train"]
        check = {"flops_ratio": flops, "flops_target": FLOPS_TARGETS[method],
                 "flops_met": None if flops is None else flops <= FLOPS_TARGETS[method],
                 "temp_memory_ratio": memory, "temp_memory_target": MEMORY_TARGET,
                 "temp_memory_met": None if memory is None else memory <= MEMORY_TARGET}
        time_ratio = r.get("time_s", {}).get("image_train")
        if time_ratio is not None and flops:
            check.update(time_ratio=time_ratio, time_tolerance=TIME_TOLERANCE,
                         time_met=abs(time_ratio - flops) <= TIME_TOLERANCE * flops)
        checks[method] = check
    return {"applies": model_name in ("ViT-B-16", "ViT-B-16-quickgelu") and config.image_size == 224,
            "on": "image_train vs none", "checks": checks}


def device_description() -> dict:
    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": f"{device.platform}: {device.device_kind}",
            "device_count": jax.device_count(), "host_cpu_count": os.cpu_count()}


def run_benchmark(model_name: str = "ViT-B-16", methods: Optional[Sequence[str]] = None, batch: int = 8,
                  image_size: Optional[int] = None, dtype: str = "float32", remat: bool = False,
                  repeats: int = 3, warmup: int = 1, measure_time: bool = True, seed: int = 0,
                  programs: Sequence[str] = PROGRAMS,
                  log: Callable[[str], None] = lambda message: None) -> dict:
    """Compiles, analyses and (optionally) times every method; returns the JSON-ready result.

    programs: the subset of PROGRAMS to compile; the others are reported as null (compiling a 12-block
    backward pass is what makes a run slow on CPU).
    """
    methods = validate_methods(registered_methods() if methods is None else methods)
    programs = validate_programs(programs)
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, repeats >= 1 and warmup >= 0; got {batch}, {repeats}, {warmup}")
    overrides = {"dtype": dtype, "remat": remat, **({"image_size": image_size} if image_size else {})}
    models = {m: elip_jax.create_model(model_name, reduction=m, **overrides) for m in methods}
    config = models["none"].config
    inputs = make_inputs(config, batch, seed)
    variables = models["none"].init(jax.random.PRNGKey(seed), inputs.images, inputs.tokens)

    results, compiled = {}, {}
    for method, model in models.items():
        log(f"[{method}] compiling")
        # every method runs the same CLIP weights; what its own modules own (a learned scorer, learnable
        # tokens) is initialised for it
        method_variables = fit_variables(model, variables, seed)
        built = {name: compile_program(name, model, method_variables, inputs) for name in programs}
        compiled.update({(method, name): built[name] for name in TIMED_PROGRAMS if name in built})
        results[method] = analyse_method(model, built)
    if measure_time:
        log(f"timing {len(compiled)} programs: {warmup} warm-up + {repeats} runs each, interleaved")
        attach_times(results, time_interleaved(compiled, repeats, warmup))
    for method in methods:
        results[method]["ratios"] = ratios_against(results[method], results["none"])

    return {
        "schema_version": SCHEMA_VERSION,
        "model": model_name, "config": config.to_dict(), "batch": batch, "image_size": config.image_size,
        "dtype": config.dtype, "remat": config.remat, "seed": seed,
        "programs": list(programs), "repeats": repeats if measure_time else 0, "warmup": warmup if measure_time else 0,
        **device_description(),
        "jax_version": jax.__version__, "elip_jax_version": elip_jax.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "analytic_flops_per": "image (vision-tower blocks only; multiply by batch for a batch)",
        "xla_flops_per": "batch (the whole compiled program)",
        "formulas": formulas(),
        "methods": results,
        "targets": evaluate_targets(results, model_name, config),
    }


def analyse_method(model: elip_jax.CLIP, built: dict) -> dict:
    """Schedule, analytic FLOPs and XLA's cost and memory analysis of one method's compiled programs."""
    config = model.config
    pick = lambda read, names: {name: read(built[name].compiled) if name in built else None for name in names}
    return {
        "schedule": schedule_summary(model),
        "tokens_per_block": tokens_per_block(model.reduction),
        "analytic_flops": analytic_image_flops(model.reduction, config.vision_width, config.mlp_ratio,
                                               heads=config.vision_heads),
        "xla_flops": pick(xla_flops, PROGRAMS),
        "xla_temp_bytes": pick(xla_temp_bytes, MEMORY_PROGRAMS),
        "compile_s": {name: built[name].compile_s if name in built else None for name in PROGRAMS},
    }


def attach_times(results: dict, times: dict) -> None:
    """Adds time_s {program: {median, min, all} or None} to every method's result."""
    for result in results.values():
        result["time_s"] = {name: None for name in TIMED_PROGRAMS}
    for (method, name), seconds in times.items():
        results[method]["time_s"][name] = {"median": statistics.median(seconds), "min": min(seconds),
                                           "all": seconds}


def validate_programs(programs: Sequence[str]) -> list[str]:
    programs = [p.strip() for p in programs if p.strip()]
    unknown = [p for p in programs if p not in PROGRAMS]
    if unknown or not programs:
        raise ValueError(f"programs must be a non-empty subset of {', '.join(PROGRAMS)}; got {programs}")
    return [p for p in PROGRAMS if p in programs]


def validate_methods(methods: Sequence[str]) -> list[str]:
    """Method names in order, `none` first (every ratio is against it; it is added when missing)."""
    methods = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in methods if m not in registered_methods()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(registered_methods())}")
    return ["none"] + [m for m in dict.fromkeys(methods) if m != "none"]


# ---------------------------------------------------------------------------------------------- reporting

def compact_tokens(counts: Sequence[int]) -> str:
    """[197, 197, 178] -> '197x2 178'."""
    runs, out = [], []
    for n in counts:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    for n, times in runs:
        out.append(f"{n}x{times}" if times > 1 else str(n))
    return " ".join(out)


def _cell(value: Optional[float], rel: Optional[float], scale: float) -> str:
    if value is None:
        return "n/a"
    text = readable_number(value / scale)
    return text if rel is None else f"{text} ({rel:.2f})"


def readable_number(x: float) -> str:
    """Whole numbers from 100 up, one decimal from 1, three significant digits below (tiny test models)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for method, r in result["methods"].items():
        q = r["ratios"]
        row = [method, compact_tokens(r["tokens_per_block"]),
               f"{q['analytic_flops']['forward']:.3f}", f"{q['analytic_flops']['image_train']:.3f}"]
        row += [_cell(r["xla_flops"][p], q["xla_flops"][p], 1e9) for p in PROGRAMS]
        row += [_cell(r["xla_temp_bytes"][p], q["xla_temp_bytes"][p], 2 ** 20) for p in MEMORY_PROGRAMS]
        if "time_s" in r and absolute_times(result):
            row += [_cell(timing_of(r, p), q["time_s"][p], 1e-3) for p in TIMED_PROGRAMS]
        elif "time_s" in r:
            row += ["n/a" if q["time_s"][p] is None else f"{q['time_s'][p]:.2f}" for p in TIMED_PROGRAMS]
        rows.append(row)
    return rows


def table_header(result: dict) -> list[str]:
    header = ["method", "tokens entering blocks", "analytic fwd", "analytic img-train",
              "XLA GFLOP img fwd", "XLA GFLOP img-train", "XLA GFLOP full step",
              "temp MiB img-train", "temp MiB full step"]
    if any("time_s" in r for r in result["methods"].values()):
        header += ["ms img-train", "ms full step"] if absolute_times(result) else \
            ["time img-train (ratio)", "time full step (ratio)"]
    return header


def absolute_times(result: dict) -> bool:
    """Tables quote absolute times from accelerators only; a shared CPU's times mean little beyond ratios."""
    return result["backend"] != "cpu"


def markdown_table(result: dict) -> str:
    header = table_header(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def run_title(result: dict) -> str:
    return (f"{result['model']} @{result['image_size']} px, {result['dtype']}, batch {result['batch']}"
            f"{', remat' if result['remat'] else ''}, {result['device']}")


def markdown_section(result: dict) -> str:
    """A self-contained BENCHMARKS.md section; ratios against `none` in parentheses."""
    targets = result["targets"]
    lines = [f"### {run_title(result)}", "",
             f"Measured {result['created']} with jax {result['jax_version']}; {result['repeats']} timed runs "
             f"(median) after {result['warmup']} warm-up. Ratios against `none` in parentheses; analytic "
             "columns are ratios only.", "", markdown_table(result), ""]
    if targets["applies"]:
        lines += ["Targets (image-train vs none): " + "; ".join(
            f"{m}: FLOPs {fmt_check(c, 'flops')}, memory {fmt_check(c, 'temp_memory')}"
            + (f", time {c['time_ratio']:.2f} {'ok' if c['time_met'] else 'MISSED'}" if "time_met" in c else "")
            for m, c in targets["checks"].items()), ""]
    return "\n".join(lines)


def fmt_check(check: dict, key: str) -> str:
    value = check[f"{key}_ratio"]
    if value is None:
        return "n/a"
    return f"{value:.3f} <= {check[f'{key}_target']:.2f} {'ok' if check[f'{key}_met'] else 'MISSED'}"


def section_marker(result: dict) -> tuple[str, str]:
    key = (f"{result['model']} {result['image_size']} {result['dtype']} b{result['batch']} "
           f"{'remat ' if result['remat'] else ''}{result['backend']}")
    return f"<!-- elip_jax.benchmark: {key} -->", "<!-- /elip_jax.benchmark -->"


def update_markdown(path: str, result: dict) -> None:
    """Writes this run's section into `path`, replacing the section of the same setting if there is one."""
    begin, end = section_marker(result)
    section = f"{begin}\n{markdown_section(result)}\n{end}\n"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\nProduced by `python -m elip_jax.benchmark`.\n\n"
    start = text.find(begin)
    if start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: found {begin!r} without its closing {end!r}; fix the file by hand")
        stop += len(end)
        if text[stop:stop + 1] == "\n":
            stop += 1
        text = text[:start] + section + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write(path, text)


def plain_table(result: dict) -> str:
    header, rows = table_header(result), table_rows(result)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m elip_jax.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="architecture name (see elip_jax.list_models())")
    p.add_argument("--methods", default=",".join(registered_methods()),
                   help=f"comma-separated subset of {','.join(registered_methods())}; none is always included")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None, help="override the model's image size")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per program (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per program before timing")
    p.add_argument("--no-time", action="store_true", help="only compile and analyse; measure no wall time")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help="comma-separated subset of the programs to compile (others are reported as null)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", help="write the full result here")
    p.add_argument("--markdown", help="write or update this run's table section in this file (BENCHMARKS.md)")
    return p.parse_args(argv)


def check_outputs(args) -> None:
    """Output files are checked before anything compiles: a folder given as a file, or a BENCHMARKS.md whose
    section markers are broken, must not be found out after minutes of compilation."""
    if args.json_path:
        check_output_file(args.json_path, "--json")
    if args.markdown:
        check_output_file(args.markdown, "--markdown")
        if os.path.exists(args.markdown):
            text = open(args.markdown).read()
            begin_prefix, end = "<!-- elip_jax.benchmark:", "<!-- /elip_jax.benchmark -->"
            if text.count(begin_prefix) != text.count(end):
                raise ValueError(f"--markdown {args.markdown!r} has {text.count(begin_prefix)} section starts and "
                                 f"{text.count(end)} section ends; fix the file by hand")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    check_outputs(args)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    result = run_benchmark(args.model, args.methods.split(","), args.batch, args.image_size, args.dtype,
                           args.remat, args.repeats, args.warmup, not args.no_time, args.seed,
                           args.programs.split(","), log)
    print(run_title(result))
    print(plain_table(result))
    if result["targets"]["applies"]:
        print(json.dumps(result["targets"]["checks"], indent=1))
    if args.json_path:
        atomic_write(args.json_path, json.dumps(result, indent=1) + "\n")
    if args.markdown:
        update_markdown(args.markdown, result)
    return result


if __name__ == "__main__":
    sys.exit(run_command(main))
