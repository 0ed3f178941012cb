"""Images/s of the training input pipeline on this machine, for the built-in dataset.

  python benchmarks/data_throughput.py --json results.json [--data_dir DIR] [--seconds 8]

Measures make_train_iterator end to end (read, decode, crop, tokenize, batch; no device transfer) at 64 and
224 px with 0 and 2 grain worker processes, after a warm-up that absorbs worker start-up.
"""
import argparse
import os
import platform
import time

import elip_jax.data as data
from elip_jax.fileio import atomic_write_json


def measure(config, image_size: int, batch_size: int, seconds: float) -> float:
    iterator = data.make_train_iterator(config, global_batch_size=batch_size, image_size=image_size, seed=0)
    for _ in range(3):  # warm-up: worker start, tokenizer load, first file reads
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch_size
    rate = count / (time.perf_counter() - start)
    iterator.close()
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default: $ELIP_JAX_DATA_DIR or cache)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per setting")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    data_dir = data.prepare_builtin(args.data_dir)
    results = []
    for image_size in (64, 224):
        for workers in (0, 2):
            config = data.default_data_config()
            config.data_dir, config.num_workers = data_dir, workers
            rate = measure(config, image_size, args.batch_size, args.seconds)
            results.append({"dataset": data.BUILTIN_DATASET, "image_size": image_size, "num_workers": workers,
                            "batch_size": args.batch_size, "images_per_s": round(rate, 1)})
            print(f"{image_size:>4} px  workers={workers}  {rate:8.1f} images/s", flush=True)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "results": results}
    atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
