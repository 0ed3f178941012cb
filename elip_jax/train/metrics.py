"""What users watch: console progress, TensorBoard scalars, throughput, TFLOP/s and MFU."""
from __future__ import annotations

import json
import logging
import os
import struct
from typing import Iterator, Optional

import jax

from elip_jax.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device, for MFU. Unknown devices (CPUs) report no MFU unless the config names one.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
}


def peak_flops_per_device(configured: float = 0.0) -> Optional[float]:
    if configured > 0:
        return configured
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


class MetricsWriter:
    """Scalars to TensorBoard (process 0) and the console (through the progress bar's postfix)."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int):
        """initial_step: the step this run starts from; what earlier runs logged after it is dropped first,
        so a resumed run never records a step twice."""
        self.is_main = jax.process_index() == 0
        self._history_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if self.is_main:
            from tensorboardX import SummaryWriter
            from tqdm import tqdm
            tensorboard_dir = os.path.join(workdir, "tensorboard")
            truncate_history(self._history_path, initial_step)
            truncate_tensorboard(tensorboard_dir, initial_step)
            self._tb = SummaryWriter(tensorboard_dir)
            self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                             dynamic_ncols=True, mininterval=1.0)

    def advance(self, steps: int = 1):
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, step: int, scalars: dict, console: bool = True):
        if not self.is_main:
            return
        for name, value in scalars.items():
            if value is not None:
                self._tb.add_scalar(name, value, step)
        if console:
            shown = {k.split("/")[-1]: (f"{v:.4g}" if isinstance(v, float) else v)
                     for k, v in scalars.items() if k.startswith(("train/", "perf/")) and v is not None}
            self._bar.set_postfix(shown, refresh=False)

    def append_history(self, step: int, scalars: dict):
        """One JSON line per log point in workdir/metrics.jsonl (appended across resumed runs)."""
        if self.is_main:
            with open(self._history_path, "a") as f:  # a line cut short by a kill is dropped on resume
                f.write(json.dumps({"step": step, **scalars}) + "\n")

    def message(self, text: str):
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def truncate_history(path: str, last_step: int) -> None:
    """Keeps metrics.jsonl's records of steps <= last_step (and drops a line cut short by a kill), atomically."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= last_step:
                kept.append(json.dumps(record) + "\n")
    atomic_write_text(path, "".join(kept))


def tfrecords(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(whole record, payload) of each complete record of a TFRecord file (TensorBoard's event files).

    A record: uint64 length, uint32 CRC of the length, payload, uint32 CRC of the payload; a record cut
    short (a killed writer) ends the file."""
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        end = offset + 12 + length + 4
        if end > len(data):
            return
        yield data[offset:end], data[offset + 12:offset + 12 + length]
        offset = end


def event_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if "tfevents" in name)


def truncate_tensorboard(directory: str, last_step: int) -> None:
    """Rewrites each event file without the events of steps after last_step.

    TensorBoard's purge_step would only ask readers to hide them (and not every reader does); rewriting
    leaves no step twice in the files themselves. Records are copied byte for byte, CRCs included.
    """
    from tensorboardX.proto.event_pb2 import Event
    for path in event_files(directory):
        with open(path, "rb") as f:
            data = f.read()
        kept = [record for record, payload in tfrecords(data) if Event.FromString(payload).step <= last_step]
        if sum(map(len, kept)) != len(data):
            atomic_write_bytes(path, b"".join(kept))


def read_scalars(directory: str) -> dict:
    """{tag: [(step, value), ...]} of every event file in a TensorBoard folder, in file order."""
    from tensorboardX.proto.event_pb2 import Event
    scalars = {}
    for path in event_files(directory):
        with open(path, "rb") as f:
            for _, payload in tfrecords(f.read()):
                event = Event.FromString(payload)
                for value in event.summary.value:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
