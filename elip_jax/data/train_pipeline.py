"""The training input pipeline: any TFDS image-text dataset -> infinite, deterministic, resumable batches.

Pipeline (grain dataset API; every step is a pure function of the seed and the global example position):
  source (tfds.data_source, images left encoded)
  -> shuffle (a new permutation every epoch) -> repeat forever
  -> per visit: choose one caption, decode/convert the image, random resized crop (rng from seed + position)
  -> this process's part: positions p, p + P, p + 2P, ...  (grain ShardOptions: index p of P processes)
  -> drop bad examples and batch (a skipped example never shrinks a batch), tokenize the batch's captions
  -> worker processes and prefetch -> [device: global jax.Arrays]
The iterator state is grain's (positions read so far, per worker) plus the skip counters; restoring it yields
exactly the batches that would have come next.
"""
import collections
import warnings
from typing import Any, Dict, Optional

import grain
import numpy as np

from elip_jax.data import bad_data, captions, checks, device, preprocess, sources, tfrecord_stream, workers
from elip_jax.data.config import validate_data_config

_STATE_VERSION = 1


class SafeSource:
    """A random-access source whose unreadable records become a marker instead of an exception."""

    UNREADABLE = {"__unreadable__": True}

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        try:
            return self._source[index]
        except Exception:  # pylint: disable=broad-except  # a corrupt record must not end the run
            return self.UNREADABLE

    def __repr__(self) -> str:  # grain fingerprints sources by repr
        return f"SafeSource({self._source!r})"


class PrepareTrainExample:
    """record, rng -> {'image': uint8 [S, S, 3], 'caption': str, 'conversions': [...]} or {'skip': reason}."""

    def __init__(self, image_key: str, caption_key: str, image_size: int, min_image_size: int,
                 crop_scale, crop_ratio):
        self.image_key = image_key
        self.caption_path = tuple(caption_key.split("/"))
        self.image_size = image_size
        self.min_image_size = min_image_size
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)

    def __call__(self, record: Any, rng: np.random.Generator) -> Dict[str, Any]:
        try:
            if record is SafeSource.UNREADABLE or not isinstance(record, dict):
                return {"skip": "unreadable_record"}
            texts, reason = bad_data.extract_captions(record, self.caption_path)
            if reason:
                return {"skip": reason}
            caption = texts[int(rng.integers(len(texts)))]  # one caption per visit, from the visit's rng
            if self.image_key not in record:
                return {"skip": "unreadable_record"}
            image, reason, conversions = bad_data.decode_image(record[self.image_key], self.min_image_size)
            if reason:
                return {"skip": reason}
            image = preprocess.train_crop(image, self.image_size, rng, self.crop_scale, self.crop_ratio)
            return {"image": image, "caption": caption, "conversions": conversions}
        except Exception:  # pylint: disable=broad-except  # anything unforeseen in one record: skip it, count it
            return {"skip": "unreadable_record"}


class CollateTrainBatch:
    """A list of good examples plus skip counts -> one batch of numpy arrays (runs in the worker)."""

    def __init__(self, context_length: int, tokenize_fn=None):
        self.context_length = context_length
        self.tokenize_fn = tokenize_fn  # None: elip_jax.tokenizer.tokenize, imported in the worker

    def __call__(self, examples, skipped: collections.Counter) -> Dict[str, np.ndarray]:
        tokens, num_truncated = captions.tokenize_captions(
            [e["caption"] for e in examples], self.context_length, self.tokenize_fn)
        converted = collections.Counter(c for e in examples for c in e["conversions"])
        converted["truncated_caption"] += num_truncated
        return {
            "images": np.stack([e["image"] for e in examples]),
            "tokens": tokens,
            "skipped": np.array([skipped[r] for r in bad_data.SKIP_REASONS], np.int64),
            "converted": np.array([converted[c] for c in bad_data.CONVERSIONS], np.int64),
        }


class FilterAndBatchIterDataset(grain.IterDataset):
    """Batches the good examples only: bad ones are counted and replaced by the next good ones, so every
    batch is full. Nothing is buffered across batches, so the parent's state after a batch is exact."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, collate: CollateTrainBatch,
                 max_consecutive_skips: int):
        super().__init__(parent)
        self.batch_size = batch_size
        self.collate = collate
        self.max_consecutive_skips = max_consecutive_skips

    def __iter__(self):
        return _FilterAndBatchIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"FilterAndBatchIterDataset(batch_size={self.batch_size})"


class _FilterAndBatchIterator(grain.DatasetIterator):

    def __init__(self, parent: grain.DatasetIterator, spec: FilterAndBatchIterDataset):
        super().__init__(parent)
        self._spec = spec

    def __next__(self):
        examples, skipped, consecutive = [], collections.Counter(), 0
        while len(examples) < self._spec.batch_size:
            example = next(self._parent)
            if "skip" in example:
                skipped[example["skip"]] += 1
                consecutive += 1
                if consecutive >= self._spec.max_consecutive_skips:
                    raise RuntimeError(
                        f"{consecutive} consecutive training examples were unusable ({dict(skipped)}): the "
                        "dataset or data_config (image_key, caption_key) is probably wrong.")
            else:
                examples.append(example)
                consecutive = 0
        return self._spec.collate(examples, skipped)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class TrainIterator:
    """Infinite iterator of {'images': uint8 [B, S, S, 3], 'tokens': int32 [B, L]}.

    `skipped` / `converted`: counters of bad examples by reason (this process's), for the trainer to log.
    `get_state()` is a JSON-serialisable dict; `set_state` restores it exactly (same config required).
    """

    def __init__(self, dataset: grain.IterDataset, *, sharding, global_batch_size: int, fingerprint: dict):
        self._dataset = dataset
        self._iterator = iter(dataset)
        self._sharding = sharding
        self._global_batch_size = global_batch_size
        self._fingerprint = fingerprint
        self._skipped = np.zeros(len(bad_data.SKIP_REASONS), np.int64)
        self._converted = np.zeros(len(bad_data.CONVERSIONS), np.int64)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, Any]:
        batch = next(self._iterator)
        self._skipped += batch["skipped"]
        self._converted += batch["converted"]
        local = {"images": batch["images"], "tokens": batch["tokens"]}
        return device.to_global_arrays(local, self._sharding, self._global_batch_size)

    @property
    def skipped(self) -> Dict[str, int]:
        return bad_data.counts_to_dict(bad_data.SKIP_REASONS, self._skipped)

    @property
    def converted(self) -> Dict[str, int]:
        return bad_data.counts_to_dict(bad_data.CONVERSIONS, self._converted)

    def get_state(self) -> Dict[str, Any]:
        return {"version": _STATE_VERSION, "fingerprint": dict(self._fingerprint),
                "grain": self._iterator.get_state(), "skipped": self.skipped, "converted": self.converted}

    def set_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a TrainIterator state (version {_STATE_VERSION}): {str(state)[:200]}")
        saved = state["fingerprint"]
        differing = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if differing:
            raise ValueError("the saved data-iterator state belongs to a different pipeline; "
                             f"(saved, current) per differing key: {differing}")
        self._iterator.set_state(state["grain"])
        self._skipped = np.array([state["skipped"].get(r, 0) for r in bad_data.SKIP_REASONS], np.int64)
        self._converted = np.array([state["converted"].get(c, 0) for c in bad_data.CONVERSIONS], np.int64)

    def close(self) -> None:
        """Stops worker processes now rather than at garbage collection."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _shard_layout(sharding, shard_options) -> tuple:
    if shard_options is not None:
        if sharding is not None:
            raise ValueError("give either sharding (processes from jax) or shard_options (simulated), not both")
        return shard_options.shard_index, shard_options.shard_count
    return device.process_layout(sharding)


class WorkerBatchOrder(grain.MapDataset):
    """Reorders a process's stream so that each grain worker reads whole batches, in the order of 0 workers.

    grain gives worker w of W the elements w, w + W, w + 2W, ... of the dataset below `to_iter_dataset` and
    emits the workers' batches round robin. Read plainly, that would make a batch of every W-th example, so
    the global batches would depend on the number of workers (and, through it, on the number of processes).
    Here element w + W * (m * b + r) is the stream's example (m * W + w) * b + r: worker w's m-th batch is the
    stream's batch m * W + w, which the round robin emits in exactly that place. So one seed gives the same
    global batches for any number of processes and workers (as long as no example is skipped: a skipped one
    is replaced by the next good one of the same worker and process).
    """

    def __init__(self, parent: grain.MapDataset, num_workers: int, batch_size: int):
        super().__init__(parent)
        self.num_workers, self.batch_size = num_workers, batch_size

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        block, offset = divmod(index, self.num_workers * self.batch_size)
        worker, row = offset % self.num_workers, offset // self.num_workers
        return self._parent[(block * self.num_workers + worker) * self.batch_size + row]

    def __str__(self) -> str:
        return f"WorkerBatchOrder(num_workers={self.num_workers}, batch_size={self.batch_size})"


class SmallSplitWarning(UserWarning):
    """The training split holds fewer examples than one global batch."""


def warn_if_smaller_than_batch(data_config, num_examples: int, global_batch_size: int) -> None:
    message = checks.small_split_message(
        data_config.name, data_config.split, num_examples, global_batch_size,
        "every batch holds some pairs twice, and a repeated pair is a false negative of the contrastive loss "
        "(use a larger split or a smaller batch)")
    if message:
        warnings.warn(message, SmallSplitWarning, stacklevel=3)


def make_train_iterator(data_config, *, global_batch_size: int, image_size: int, seed: int, sharding=None,
                        context_length: int = 77, shard_options: Optional[grain.sharding.ShardOptions] = None,
                        tokenize_fn=None) -> TrainIterator:
    """The training iterator for `data_config` (see default_data_config).

    sharding: a NamedSharding over the batch axis -> global jax.Arrays from each process's part; None -> numpy
      arrays of this process's part (the whole batch in a single process).
    seed: the data seed (order, crops, caption choice); overrides data_config.seed so the trainer owns it.
    shard_options: simulate process index/count without jax.distributed (tests, offline sharding checks).
    tokenize_fn: stand-in for elip_jax.tokenize (must be picklable when num_workers > 0).
    """
    validate_data_config(data_config)
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32); got {seed!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    shard_index, shard_count = _shard_layout(sharding, shard_options)
    batch_size = device.local_batch_size(global_batch_size, shard_count)
    prepare = PrepareTrainExample(data_config.image_key, data_config.caption_key, image_size,
                                  data_config.min_image_size, data_config.crop_scale, data_config.crop_ratio)
    builder = sources.load_builder(data_config.name, data_config.data_dir)
    if not sources.is_tfrecord(builder):
        source = sources.open_source(data_config.name, data_config.split, data_config.data_dir)
        warn_if_smaller_than_batch(data_config, len(source), global_batch_size)
        ds = grain.MapDataset.source(SafeSource(source))
        if data_config.shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat()  # infinite; shuffle and random_map see the epoch in the position: new order, new crops
        ds = ds.random_map(prepare, seed=seed)  # before sharding: an example's crop is independent of P
        ds = ds[shard_index::shard_count]
        if data_config.num_workers > 1:
            ds = WorkerBatchOrder(ds, data_config.num_workers, batch_size)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_config.read_threads,
                                                  prefetch_buffer_size=max(2 * batch_size, 16)))
    else:
        warn_if_smaller_than_batch(data_config, builder.info.splits[data_config.split].num_examples,
                                   global_batch_size)
        ds = tfrecord_stream.train_stream(builder, data_config, prepare, seed=seed,
                                          shard_index=shard_index, shard_count=shard_count)
    ds = FilterAndBatchIterDataset(ds, batch_size, CollateTrainBatch(context_length, tokenize_fn),
                                   data_config.max_consecutive_skips)
    if data_config.num_workers > 0:
        ds = ds.mp_prefetch(workers.multiprocessing_options(data_config.num_workers, max(data_config.prefetch, 1)))
    elif data_config.prefetch > 0:  # overlap batch assembly with the training step in a background thread
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_config.prefetch)
    fingerprint = {"name": data_config.name, "split": data_config.split, "seed": seed,
                   "global_batch_size": global_batch_size, "image_size": image_size,
                   "context_length": context_length, "shard": [shard_index, shard_count],
                   "num_workers": data_config.num_workers, "shuffle": bool(data_config.shuffle)}
    return TrainIterator(ds, sharding=sharding, global_batch_size=global_batch_size, fingerprint=fingerprint)
