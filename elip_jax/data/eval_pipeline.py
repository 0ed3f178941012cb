"""The evaluation input pipeline: ordered, every example exactly once across all processes, padded.

Global batch k holds split indices [k*B, (k+1)*B); process p of P feeds rows [p*b, (p+1)*b) of it (b = B/P),
so the global batch, read row by row, is in split order. Positions past the end are padding (index -1,
mask False). Every process runs len(iterator) = ceil(N / B) steps, so collective evaluation code never hangs.
An image that cannot be decoded keeps its row and index but gets mask False, and is counted in `skipped`.
"""
import math
from typing import Any, Dict, Optional

import grain
import numpy as np

from elip_jax.data import bad_data, device, preprocess, sources, tfrecord_stream, workers

_SKIP_CODES = {reason: code for code, reason in enumerate(bad_data.SKIP_REASONS, start=1)}  # 0: usable


def eval_layout(num_examples: int, global_batch_size: int, process_index: int, process_count: int):
    """(num_batches, int64 [num_batches, b] split indices of this process's rows, -1 for padding)."""
    local = device.local_batch_size(global_batch_size, process_count)
    num_batches = math.ceil(num_examples / global_batch_size)
    rows = (np.arange(num_batches)[:, None] * global_batch_size + process_index * local + np.arange(local)[None])
    return num_batches, np.where(rows < num_examples, rows, -1)


class PrepareEvalExample:
    """(split index, record or None) -> one row: image uint8 [S, S, 3], label, index, mask, skip code."""

    def __init__(self, image_key: str, label_key: Optional[str], image_size: int, min_image_size: int = 1):
        self.image_key, self.label_key = image_key, label_key
        self.image_size, self.min_image_size = image_size, min_image_size

    def padding(self, index: int = -1, skip: int = 0) -> Dict[str, Any]:
        return {"images": np.zeros((self.image_size, self.image_size, 3), np.uint8), "labels": np.int32(-1),
                "index": np.int32(index), "mask": np.bool_(False), "skip": np.int32(skip)}

    def __call__(self, index: int, record: Any) -> Dict[str, Any]:
        if index < 0:
            return self.padding()
        if not isinstance(record, dict) or self.image_key not in record:
            return self.padding(index, _SKIP_CODES["unreadable_record"])
        try:
            image, reason, _ = bad_data.decode_image(record[self.image_key], self.min_image_size)
            if reason:
                return self.padding(index, _SKIP_CODES[reason])
            image = preprocess.eval_resize_crop(image, self.image_size)
        except Exception:  # pylint: disable=broad-except
            return self.padding(index, _SKIP_CODES["undecodable_image"])
        label = -1 if self.label_key is None else int(np.asarray(record[self.label_key]))
        return {"images": image, "labels": np.int32(label), "index": np.int32(index), "mask": np.bool_(True),
                "skip": np.int32(0)}


class _ReadAndPrepare:
    """Split index -> prepared row, reading the random-access source (picklable for worker processes)."""

    def __init__(self, source, prepare: PrepareEvalExample):
        self.source, self.prepare = source, prepare

    def __call__(self, index) -> Dict[str, Any]:
        index = int(index)
        if index < 0:
            return self.prepare.padding()
        try:
            record = self.source[index]
        except Exception:  # pylint: disable=broad-except
            record = None
        return self.prepare(index, record)


class EvalIterator:
    """Iterable of {'images', 'labels', 'index', 'mask'} batches; `len()` is equal on every process."""

    def __init__(self, make_batches, num_batches: int, num_examples: int, sharding, global_batch_size: int):
        self._make_batches = make_batches
        self._num_batches = num_batches
        self.num_examples = num_examples
        self._sharding = sharding
        self._global_batch_size = global_batch_size
        self._skipped = np.zeros(len(bad_data.SKIP_REASONS), np.int64)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def skipped(self) -> Dict[str, int]:
        return bad_data.counts_to_dict(bad_data.SKIP_REASONS, self._skipped)

    def __iter__(self):
        self._skipped[:] = 0
        for batch in self._make_batches():
            codes = batch.pop("skip")
            self._skipped += np.bincount(codes, minlength=len(bad_data.SKIP_REASONS) + 1)[1:]
            yield device.to_global_arrays(batch, self._sharding, self._global_batch_size)


def _stack(rows):
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def make_eval_iterator(dataset: str, split: str, *, data_dir: Optional[str] = None, image_size: int,
                       global_batch_size: int, image_key: str = "image", label_key: Optional[str] = "label",
                       sharding=None, shard_options: Optional[grain.sharding.ShardOptions] = None,
                       num_workers: int = 0, read_threads: int = 2) -> EvalIterator:
    """Evaluation batches of `dataset`/`split`, resized (shorter side, bicubic) and centre-cropped to image_size.

    label_key=None: datasets without labels (labels are -1). shard_options: simulate process index/count.
    """
    if shard_options is not None and sharding is not None:
        raise ValueError("give either sharding (processes from jax) or shard_options (simulated), not both")
    process_index, process_count = ((shard_options.shard_index, shard_options.shard_count)
                                    if shard_options is not None else device.process_layout(sharding))
    builder = sources.load_builder(dataset, data_dir)
    prepare = PrepareEvalExample(image_key, label_key, image_size)
    if not sources.is_tfrecord(builder):
        source = sources.open_source(dataset, split, data_dir)
        num_examples = len(source)
    else:
        source = None
        num_examples = builder.info.splits[split].num_examples
    num_batches, rows = eval_layout(num_examples, global_batch_size, process_index, process_count)
    local = rows.shape[1]

    if source is not None:
        def make_batches():
            ds = grain.MapDataset.source(rows.reshape(-1)).map(_ReadAndPrepare(source, prepare))
            ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * local))
            ds = ds.batch(local, batch_fn=_stack)
            if num_workers > 0:
                ds = ds.mp_prefetch(workers.multiprocessing_options(num_workers, 2))
            return iter(ds)
    else:
        def make_batches():
            wanted = {int(i): (k, j) for k, row in enumerate(rows) for j, i in enumerate(row) if i >= 0}
            batch_rows = [prepare.padding() for _ in range(local)]
            next_batch = 0
            for index, record in tfrecord_stream.ordered_records(builder, split):
                if index not in wanted:
                    continue
                k, j = wanted[index]
                while next_batch < k:  # earlier batches are complete (their rows came earlier in the split)
                    yield _stack(batch_rows)
                    batch_rows, next_batch = [prepare.padding() for _ in range(local)], next_batch + 1
                batch_rows[j] = prepare(index, record)
            while next_batch < num_batches:
                yield _stack(batch_rows)
                batch_rows, next_batch = [prepare.padding() for _ in range(local)], next_batch + 1

    return EvalIterator(make_batches, num_batches, num_examples, sharding, global_batch_size)
