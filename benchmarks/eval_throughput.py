"""Images per second of zero-shot classification (image tower + class scores + top-5), on this machine.

    PYTHONPATH=. python benchmarks/eval_throughput.py --json eval_throughput.json
    python benchmarks/eval_throughput.py --configs tiny:64,ViT-B-32:224 --batch-size 64 --batches 4

Random-init models and random uint8 images: the number measures the sharded evaluation loop itself (transfer
to the devices, the jitted image program, the gather of the top-5 back to the host), not the input pipeline.
The first batch (compilation) is not timed. The device is named in the JSON: compare only like with like.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import numpy as np

from elip_jax.evaluate.cli import load_model
from elip_jax.evaluate.evaluator import with_reduction
from elip_jax.evaluate.flops import image_flops_per_image
from elip_jax.evaluate.results import write_json
from elip_jax.evaluate.sharding import batch_sharding, data_mesh
from elip_jax.evaluate.zeroshot import evaluate_classification

NUM_CLASSES = 1000  # ImageNet-sized classifier


def synthetic_batches(num_batches: int, batch_size: int, image_size: int, mesh, seed: int = 0):
    rng = np.random.default_rng(seed)
    sharding = batch_sharding(mesh)
    images = rng.integers(0, 256, size=(batch_size, image_size, image_size, 3), dtype=np.uint8)
    for b in range(num_batches):
        index = np.arange(b * batch_size, (b + 1) * batch_size, dtype=np.int32)
        yield {"images": jax.device_put(images, sharding),
               "labels": jax.device_put(rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32), sharding),
               "index": jax.device_put(index, sharding), "mask": jax.device_put(np.ones(batch_size, bool), sharding)}


def measure(name: str, image_size: int, batch_size: int, num_batches: int, reduction) -> dict:
    model, variables, _ = load_model(model_name=name, image_size=image_size)
    model = with_reduction(model, reduction)
    mesh = data_mesh()
    rng = np.random.default_rng(1)
    classes = rng.normal(size=(NUM_CLASSES, model.config.embed_dim)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    start = time.perf_counter()
    out = evaluate_classification(model, variables, synthetic_batches(num_batches, batch_size, image_size, mesh),
                                  classes, mesh, description=name)
    return {"model": name, "image_size": image_size, "reduction": model.reduction.method,
            "keep": list(model.reduction.keep), "global_batch_size": batch_size, "batches": num_batches,
            "examples_per_second": out["examples_per_second"], "wall_seconds_incl_compile": time.perf_counter() - start,
            "flops_per_image": image_flops_per_image(model, variables)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny:64,ViT-B-32:224", help="comma-separated MODEL:IMAGE_SIZE")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=4, help="timed batches + 1 compiling batch")
    p.add_argument("--reductions", default="none", help="comma-separated: none, evit (default schedule)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    runs = []
    for config in args.configs.split(","):
        name, size = config.split(":")
        for reduction in args.reductions.split(","):
            try:
                runs.append(measure(name, int(size), args.batch_size, args.batches + 1, reduction))
            except ValueError as error:  # e.g. no default schedule for this depth: say so, keep measuring
                runs.append({"model": name, "image_size": int(size), "reduction": reduction, "error": str(error)})
            print(json.dumps(runs[-1]), flush=True)
    result = {"device": {"platform": jax.default_backend(), "kind": jax.devices()[0].device_kind,
                         "count": jax.device_count(), "host": platform.processor() or platform.machine()},
              "jax": jax.__version__, "python": sys.version.split()[0], "runs": runs}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
