"""Key masking against gathering in the golden search, measured in one run on one device (BENCHMARKS.md).

    python -m elip_jax.patch_ranking benchmark-golden [--pretrained DIR | --model NAME] [--batch B]
        [--repeats R] [--prune-layer L --per-step M --target N --candidate 1|2] [--output FILE.json]

Masking keeps every patch in the sequence and biases the removed keys to -inf: one program for every step, more
FLOPs. Gathering builds the shorter sequence of the remaining patches: fewer FLOPs, one program per step. For each
mode this reports the XLA FLOPs of one search (every step's program, all candidates in one chunk so that XLA's
count covers them), the compile time, the time of a search after compiling (the best of `repeats`), and whether
both modes chose the same patches. Speeds are ratios within the run; no absolute claim is made of them.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from elip_jax.command_line import ArgumentParser, check_output_file

PROG = "python -m elip_jax.patch_ranking benchmark-golden"


def compare_modes(model, variables, images, settings, repeats: int = 3) -> dict:
    """{mode: {flops, compile_s, search_s, images_per_s, candidate_forwards_per_s}, 'same_rankings': bool,
    'faster': mode} for a batch of images (float, CLIP-normalised)."""
    import jax
    from elip_jax.accounting import xla_flops
    from elip_jax.patch_ranking.golden import GATHERING, MASKING, GoldenSearch

    results, rankings = {}, {}
    for mode in (MASKING, GATHERING):
        search = GoldenSearch(model, variables, settings, mode=mode, candidate_batch=settings.num_candidates)
        start = time.perf_counter()
        rankings[mode] = search(images)  # compiles every program it needs
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            search(images)
            times.append(time.perf_counter() - start)
        flops = 0.0
        x0, reference = search._prefix(search.variables, search.put(images))  # pylint: disable=protected-access
        removed = np.zeros((images.shape[0], settings.num_candidates), bool)
        labels = search.put(np.zeros(images.shape[0], np.int32))
        done = 0
        for count in settings.removal_counts():
            step = search._step(done)  # pylint: disable=protected-access
            compiled = step.lower(search.variables, x0, search.put(removed), reference, labels, None).compile()
            flops += xla_flops(compiled) or float("nan")
            done += count
        best = min(times)
        results[mode] = {"flops_per_search": flops, "flops_per_image": flops / images.shape[0],
                         "compile_and_first_s": compile_s, "search_s": best,
                         "images_per_s": images.shape[0] / best,
                         "candidate_forwards_per_s": images.shape[0] * settings.candidate_forwards() / best,
                         "programs": len(search._steps) + 1}  # pylint: disable=protected-access
    results["same_rankings"] = bool(np.array_equal(rankings[MASKING], rankings[GATHERING]))
    results["faster"] = min((MASKING, GATHERING), key=lambda m: results[m]["search_s"])
    results["gathering_time_over_masking"] = results[GATHERING]["search_s"] / results[MASKING]["search_s"]
    results["gathering_flops_over_masking"] = (results[GATHERING]["flops_per_search"]
                                               / results[MASKING]["flops_per_search"])
    results["device"] = jax.devices()[0].device_kind
    results["batch"] = int(images.shape[0])
    results["settings"] = settings.as_dict()
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog=PROG, description="golden search: key masking against gathering")
    parser.add_argument("--pretrained", default=None, help="a converted folder or training workdir")
    parser.add_argument("--model", default="tiny-12", help="architecture with random weights (no --pretrained)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prune-layer", type=int, default=None)
    parser.add_argument("--per-step", type=int, default=None)
    parser.add_argument("--target", type=int, default=None)
    parser.add_argument("--candidate", type=int, default=1, choices=(1, 2))
    parser.add_argument("--output", default=None, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    if args.output:
        check_output_file(args.output, suffix=".json")
    import jax
    from elip_jax import checkpoints
    from elip_jax.fileio import atomic_write_json
    from elip_jax.patch_ranking.golden import make_settings
    model, variables, name = checkpoints.load(args.pretrained or args.model)
    settings = make_settings(model.config, prune_layer=args.prune_layer, per_step=args.per_step,
                             target=args.target, candidate=args.candidate)
    c = model.config
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (args.batch, c.image_size, c.image_size, 3)))
    results = {"model": name, **compare_modes(model, variables, images, settings, args.repeats)}
    for mode in ("masking", "gathering"):
        r = results[mode]
        print(f"{mode:9s} {r['flops_per_image'] / 1e9:.3f} GFLOPs/image, {r['programs']} program(s), compile+first "
              f"{r['compile_and_first_s']:.1f} s, search {r['search_s']:.3f} s ({r['images_per_s']:.2f} images/s, "
              f"{r['candidate_forwards_per_s']:.0f} candidate forwards/s)")
    print(f"gathering/masking: time {results['gathering_time_over_masking']:.3f}, FLOPs "
          f"{results['gathering_flops_over_masking']:.3f}; same rankings: {results['same_rankings']}; faster: "
          f"{results['faster']} ({results['device']}, batch {results['batch']})")
    if args.output:
        atomic_write_json(args.output, results)
    return 0
