"""python -m elip_jax.patch_ranking golden --pretrained DIR --dataset NAME --split SPLIT --output DIR
       [--prune-layer L --per-step M --target N --candidate 1|2 --score similarity|label|max]
       [--data-dir DIR --batch-size B --mode masking|gathering --candidate-batch K]

Golden rankings of every image of a TFDS split (elip_jax.patch_ranking.golden), written in chunks of --batch-size
images keyed by the split's example index (format: elip_jax.patch_ranking.rankings). Kill it and run the same
command again: it continues with the chunks not yet written. Everything a user can get wrong is checked before
anything compiles; bad input is one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import numpy as np

from elip_jax.command_line import ArgumentParser, UsageError
from elip_jax.patch_ranking import rankings as rankings_lib

PROG = "python -m elip_jax.patch_ranking golden"


def build_parser() -> ArgumentParser:
    from elip_jax.patch_ranking.golden import DEFAULT_CANDIDATE_BATCH, DEFAULT_MODE, MODES, SCORES
    parser = ArgumentParser(prog=PROG, description="Greedy golden patch rankings of a dataset split (Patch Ranking, "
                                                   "docs/patch_ranking.md); rerun to resume.")
    parser.add_argument("--pretrained", required=True, help="a converted folder or a training workdir")
    parser.add_argument("--dataset", required=True, help="TFDS name (elip_shapes/small: the built-in dataset)")
    parser.add_argument("--split", required=True, help="TFDS split, slices allowed (train[:2000])")
    parser.add_argument("--output", required=True, help="folder of the rankings (meta.json, chunks/)")
    parser.add_argument("--prune-layer", type=int, default=None,
                        help="the block before which patches go (default: 3 of 12, scaled to the depth)")
    parser.add_argument("--per-step", type=int, default=None,
                        help="candidates removed per greedy step (default: the published 10 of 196 candidates, "
                             "scaled to the tower: 10 for ViT-B/16, 3 for 64 patches)")
    parser.add_argument("--target", type=int, default=None, help="patches removed in all (default 40 %%)")
    parser.add_argument("--candidate", type=int, default=1, choices=(1, 2), help="1: patches, 2: 2x2 blocks")
    parser.add_argument("--score", default="similarity", choices=SCORES,
                        help="similarity to the unpruned embedding, zero-shot probability of the label, or the "
                             "highest class probability")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: TFDS's; built-in: its own)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per chunk (one search call; a multiple of the device count is best)")
    parser.add_argument("--mode", default=DEFAULT_MODE, choices=MODES, help="removal by key masking (one shape) "
                        "or by gathering the remaining patches (one shape per step)")
    parser.add_argument("--candidate-batch", type=int, default=DEFAULT_CANDIDATE_BATCH,
                        help="candidates computed together (memory: images x this many sequences)")
    multi = parser.add_argument_group("several processes (each runs the same command; images are sharded over "
                                      "the devices of all of them; process 0 writes)")
    multi.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0 (or "
                       "ELIP_JAX_COORDINATOR, or found by Slurm / TPU pods)")
    multi.add_argument("--num-processes", type=int, default=None)
    multi.add_argument("--process-id", type=int, default=None)
    multi.add_argument("--distributed-timeout-s", type=int, default=300,
                       help="how long to wait for every process to join")
    return parser


class Progress:
    """A progress bar over images, showing images/s and candidate forwards/s of this run."""

    def __init__(self, total: int, done: int, forwards_per_image: int, enabled: bool):
        from tqdm.auto import tqdm
        self.forwards_per_image = forwards_per_image
        self.bar = tqdm(total=total, initial=done, unit="img", desc="golden", disable=not enabled)
        self.started, self.images = time.perf_counter(), 0

    def advance(self, images: int) -> None:
        self.images += images
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.images / elapsed
        self.bar.set_postfix_str(f"{rate:.2f} images/s, {rate * self.forwards_per_image:.0f} candidate forwards/s")
        self.bar.update(images)

    def rates(self) -> dict:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {"images_per_s": self.images / elapsed,
                "candidate_forwards_per_s": self.images * self.forwards_per_image / elapsed, "seconds": elapsed}

    def close(self):
        self.bar.close()


def check_arguments(args) -> None:
    for flag, value in (("--batch-size", args.batch_size), ("--candidate-batch", args.candidate_batch)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1; got {value}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output!r} is a file; it must be a folder")
    if not os.path.exists(args.pretrained):
        raise UsageError(f"--pretrained {args.pretrained!r} does not exist (a converted folder or a training "
                         "workdir)")


def class_embeddings_for(model, variables, dataset: str, data_dir: Optional[str], mesh):
    """The zero-shot classifier [K, E] of `dataset` (label and max scores)."""
    from elip_jax.evaluate.classifier import zeroshot_classifier
    from elip_jax.evaluate.classnames import zeroshot_prompts
    from elip_jax.evaluate import sources
    prompts = zeroshot_prompts(dataset, sources.tfds_label_names(dataset, data_dir, "label"))
    return zeroshot_classifier(model, variables, prompts, mesh)


def read_images(source, prepare, start: int, count: int):
    """(uint8 images [n, S, S, 3], labels [n], usable [n]) of split examples start .. start + count - 1."""
    rows = []
    for index in range(start, start + count):
        try:
            record = source[index]
        except Exception:  # pylint: disable=broad-except  # an unreadable record is skipped, not fatal
            record = None
        rows.append(prepare(index, record))
    return (np.stack([r["images"] for r in rows]), np.asarray([r["labels"] for r in rows], np.int32),
            np.asarray([r["mask"] for r in rows], bool))


def chunks_to_compute(output: str, meta: dict, starts: Sequence[int]) -> list[int]:
    """The chunk starts not yet written, as process 0 sees them (it alone creates and checks the folder, which
    other hosts may not even see), the same on every process. A refusal by process 0 (another search in the
    folder) is raised there and, without the folder's details, on the others."""
    import jax
    refusal, done = None, []
    if jax.process_index() == 0:
        try:
            done = rankings_lib.start_folder(output, meta)
        except ValueError as error:
            refusal = error
    plan = np.asarray([refusal is None] + [start in done for start in starts], np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        plan = np.asarray(multihost_utils.broadcast_one_to_all(plan))
    if refusal is not None:
        raise refusal
    if not plan[0]:
        raise UsageError(f"process 0 refused --output {output!r} (its error says why)")
    return [start for start, written in zip(starts, plan[1:]) if not written]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    from elip_jax.train.distributed import initialize
    try:  # before anything touches a device; a single-process run (no flags, no cluster) does nothing here
        initialize(args.coordinator_address, args.num_processes, args.process_id, args.distributed_timeout_s)
    except (RuntimeError, ValueError) as error:
        raise UsageError(str(error)) from None
    import jax
    from jax.sharding import Mesh
    from elip_jax import checkpoints, data as data_lib
    from elip_jax.data.eval_pipeline import PrepareEvalExample
    from elip_jax.patch_ranking.golden import GoldenSearch, make_settings

    dataset = data_lib.canonical_name(args.dataset)
    data_dir = data_lib.resolve_data_dir(dataset, args.data_dir)
    keys = {"--score label/max needs": "label"} if args.score != "similarity" else {}
    num_examples = data_lib.check_dataset(dataset, args.split, data_dir, keys={"image": "image", **keys})
    if args.score != "similarity":  # before anything loads: a dataset without zero-shot prompts fails here
        from elip_jax.evaluate.classnames import zeroshot_prompts
        zeroshot_prompts(dataset)
    model, variables, _ = checkpoints.load(args.pretrained)
    settings = make_settings(model.config, prune_layer=args.prune_layer, per_step=args.per_step,
                             target=args.target, score=args.score, candidate=args.candidate)
    meta = {"dataset": dataset, "split": args.split, "data_dir": data_dir, "num_examples": num_examples,
            "num_patches": settings.num_patches, "chunk_size": args.batch_size, "settings": settings.as_dict(),
            "mode": args.mode, "pretrained": os.path.abspath(args.pretrained), "image_size": model.config.image_size}
    main_process = jax.process_index() == 0
    starts = chunks_to_compute(args.output, meta, range(0, num_examples, args.batch_size))
    source = data_lib.open_source(dataset, args.split, data_dir)
    prepare = PrepareEvalExample("image", "label", model.config.image_size)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    classes = (class_embeddings_for(model, variables, dataset, data_dir, mesh) if args.score != "similarity"
               else None)
    search = GoldenSearch(model, variables, settings, mode=args.mode, candidate_batch=args.candidate_batch,
                          class_embeddings=classes, mesh=mesh)
    already = num_examples - sum(min(args.batch_size, num_examples - s) for s in starts)
    print(f"golden rankings of {dataset} {args.split}: {num_examples} images, {len(starts)} chunk(s) to compute "
          f"({already} images done); prune layer {settings.prune_layer}, {settings.target} of "
          f"{settings.num_patches} patches, {settings.per_step} per step ({len(settings.removal_counts())} steps, "
          f"{settings.candidate_forwards()} candidate forwards per image), {args.mode}, {search.devices} "
          f"device(s)", flush=True)
    progress = Progress(num_examples, already, settings.candidate_forwards(), main_process)
    skipped = 0
    try:
        for start in starts:
            count = min(args.batch_size, num_examples - start)
            images, labels, usable = read_images(source, prepare, start, count)
            ranked = search(np.asarray(data_lib.normalize_images(images)), labels)
            ranked[~usable] = -1
            skipped += int((~usable).sum())
            if main_process:
                rankings_lib.write_chunk(args.output, start, ranked)
            progress.advance(count)
    finally:
        progress.close()
    rates = progress.rates()
    print(f"done: {args.output} ({skipped} unreadable image(s) skipped); this run {rates['images_per_s']:.2f} "
          f"images/s, {rates['candidate_forwards_per_s']:.0f} candidate forwards/s", flush=True)
    return 0
