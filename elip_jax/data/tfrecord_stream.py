"""tfrecord datasets (TFDS's default file format) read through tf.data, for when TensorFlow is installed.

tfrecord has no random access, so this path is a stream: shuffling is file-level plus a shuffle buffer (not a
global permutation), and a restored iterator re-reads and skips the examples already consumed (exact, O(k)).
Convert to array_record for the full-featured path (sources.tfrecord_conversion_message says how).
TensorFlow is a test dependency, so CI exercises this module.
"""
from typing import Iterator, Optional, Tuple

import grain
import tensorflow_datasets as tfds

from elip_jax.data import sources


def _require_tensorflow(builder) -> None:
    if not sources.tensorflow_available():
        raise ValueError(sources.tfrecord_conversion_message(builder.info.full_name, str(builder.data_dir)))


def _tf_records(builder, split: str, *, shuffle: bool, seed: int, shuffle_buffer: int, repeat: bool,
                skip: int = 0):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    decoders = {key: tfds.decode.SkipDecoding() for key in sources.image_features(builder)}
    options = tf.data.Options()
    options.deterministic = True  # the order must not depend on thread timing: resumption relies on it
    # training shuffles even datasets that declare an order (disable_shuffling): their order is not ours to keep
    read_config = tfds.ReadConfig(shuffle_seed=seed, options=options, enable_ordering_guard=not shuffle)
    ds = builder.as_dataset(split=split, decoders=decoders or None, shuffle_files=shuffle, read_config=read_config)
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return tfds.as_numpy(ds.skip(skip).prefetch(tf.data.AUTOTUNE))


class _TfRecordIterDataset(grain.IterDataset):
    def __init__(self, builder, split: str, shuffle: bool, seed: int, shuffle_buffer: int):
        super().__init__()
        self.args = (builder, split, shuffle, seed, shuffle_buffer)

    def __iter__(self):
        return _TfRecordIterator(self.args)


class _TfRecordIterator(grain.DatasetIterator):
    def __init__(self, args):
        super().__init__()
        self._args = args
        self._consumed = 0
        self._records = None

    def __next__(self):
        if self._records is None:
            builder, split, shuffle, seed, buffer = self._args
            self._records = iter(_tf_records(builder, split, shuffle=shuffle, seed=seed, shuffle_buffer=buffer,
                                             repeat=True, skip=self._consumed))
        record = next(self._records)
        self._consumed += 1
        return record

    def get_state(self):
        return {"consumed": self._consumed}

    def set_state(self, state):
        self._consumed = int(state["consumed"])
        self._records = None


def train_stream(builder, data_config, prepare, *, seed: int, shard_index: int, shard_count: int):
    """Infinite IterDataset of prepared examples of this process's even part of the split."""
    _require_tensorflow(builder)
    split = tfds.even_splits(data_config.split, n=shard_count, drop_remainder=True)[shard_index]
    ds = _TfRecordIterDataset(builder, split, bool(data_config.shuffle), seed, data_config.shuffle_buffer)
    return ds.random_map(prepare, seed=seed)


def ordered_records(builder, split: str, start: int = 0, stop: Optional[int] = None) -> Iterator[Tuple[int, dict]]:
    """(index, record) in split order, for evaluation."""
    _require_tensorflow(builder)
    records = _tf_records(builder, split, shuffle=False, seed=0, shuffle_buffer=1, repeat=False, skip=start)
    for index, record in enumerate(records, start=start):
        if stop is not None and index >= stop:
            return
        yield index, record
