"""What users watch: console progress, TensorBoard scalars, throughput, TFLOP/s and MFU."""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import jax

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
        self.is_main = jax.process_index() == 0
        self._history_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if self.is_main:
            from tensorboardX import SummaryWriter
            from tqdm import tqdm
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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
            with open(self._history_path, "a") as f:
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
