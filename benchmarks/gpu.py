#!/usr/bin/env python
"""Every GPU measurement of issue 13 in one call of at most 8 minutes: MFU, ELIP's speed-up, memory, inference,
and open_clip's own PyTorch step on the same GPU.

    ./benchmarks/gpu.sh OUT_DIR              # the GPU machine: installs the carried open_clip wheels, runs this
    python benchmarks/gpu.py OUT_DIR         # the same, when open_clip is importable
    python benchmarks/gpu.py OUT_DIR --smoke # CPU: the tiny model, two steps, every section (tests/test_gpu_benchmark.py)

Sections, each in its own process (XLA reads its flags at start-up, and a process that overruns its share of
--budget-s is stopped and keeps what it wrote so far):
  train          the full contrastive step of elip_jax's trainer (`elip_jax.train.step.make_train_step`: both
                 towers, bf16 compute, fp32 parameters, AdamW with clipping, uint8 batch normalised in the step)
                 on synthetic data already on the device, for every method `elip_jax.reduction.METHODS` offers:
                 images/s, TFLOP/s (XLA's cost analysis of the compiled step), MFU against the bf16 peak of a
                 large matmul measured first in the same process, step-time ratios against `none` from the same
                 interleaved rounds; then the attention implementations (the model's own, cuDNN, plain einsum).
  open_clip      open_clip's step as its training script runs it: fp32 parameters, bf16 autocast, ClipLoss,
                 AdamW with open_clip's weight-decay groups, logit-scale clamp; same batch, same GPU.
  inference      the image tower's forward in bf16 for `none` and every method that prunes without a caption.
  flags          the `none` (and `elip`) step again under each XLA flag variant (latency-hiding scheduler).
  torch_compile  open_clip's step through torch.compile, when enough of the budget is left.
  memory         (beside the others, compile only) the largest batch per method that fits in device memory,
                 with and without remat, from XLA's memory analysis of the compiled step: a search seeded by a
                 line through two probes, on multiples of a granularity.
It prints a short table last and writes OUT_DIR/results.json (everything), OUT_DIR/summary.txt (the table),
OUT_DIR/workers/*.json (each process's own record) and OUT_DIR/logs/*.log.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.machinery
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SCHEMA_VERSION = 1
# What the GPU machine's image lacks (issue 13); --smoke blocks them too, so CI runs the GPU machine's import path.
GPU_IMAGE_LACKS = ("ml_collections", "grain", "tensorflow_datasets", "array_record", "ftfy")
SOT, EOT, CAPTION_LENGTH = 49406, 49407, 20  # synthetic captions: SOT, 18 word ids, EOT, padding
# The trainer's optimizer settings (elip_jax/train/defaults.py `optim`, which needs ml_collections to import;
# tests/test_gpu_benchmark.py checks that these stay equal to it).
OPTIMIZER = dict(lr=5e-4, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2,
                 grad_clip_norm=1.0)
LOGIT_SCALE_MAX = 100.0
SCHEDULE_STEPS = 1000  # the learning-rate schedule's length; only its shape, never its value, matters here
# Vendor datasheet dense bf16 peaks (no sparsity), for a second MFU beside the one against the measured peak.
SPEC_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
ATTENTION_VARIANTS = ("model", "cudnn", "einsum")  # "model": whatever elip_jax.models.layers.attention does
FLAG_VARIANTS = {"latency_hiding_scheduler": "--xla_gpu_enable_latency_hiding_scheduler=true"}
# Each section ends by this fraction of the budget (cumulative: time a section leaves goes to the next ones).
SECTION_ENDS = {"train": 0.45, "open_clip": 0.57, "inference": 0.67, "flags": 0.85, "torch_compile": 0.97}
MEMORY_END = 0.93
STOP_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Profile:
    model: str  # elip_jax architecture
    open_clip_model: Optional[str]  # open_clip's name for the same architecture; None: built from the config dict
    batch: int  # training batch for every method and for open_clip (halved until the `none` step fits)
    inference_batch: int
    warmup: int  # untimed steps per program after the first
    steps: int  # steps per timed round (one device sync per round)
    rounds: int  # rounds, the programs interleaved within each; the median round is reported
    matmul_sizes: tuple  # n of the n x n x n bf16 matmuls that measure the peak
    memory_start: int  # first memory probe (the second is twice it)
    memory_granularity: int  # largest batch searched on multiples of this
    memory_methods: Optional[tuple]  # None: every method
    memory_threads: int
    memory_max_probes: int
    attention_methods: tuple  # methods whose step is measured with every attention implementation
    flag_methods: tuple
    budget_s: float
    compile_threads: int
    torch_compile_min_s: float  # torch.compile starts only with this much of its share left
    torch_compile_backend: str
    xla_flags: str = ""  # for every JAX section



GPU_PROFILE = Profile(model="ViT-B-16", open_clip_model="ViT-B-16-quickgelu", batch=512, inference_batch=1024,
                      warmup=2, steps=10, rounds=3, matmul_sizes=(4096, 8192, 16384), memory_start=256,
                      memory_granularity=32, memory_methods=None, memory_threads=4, memory_max_probes=8,
                      attention_methods=("none", "elip"), flag_methods=("none", "elip"), budget_s=450.0,
                      compile_threads=6, torch_compile_min_s=45.0, torch_compile_backend="inductor")
# CPU smoke: the same code paths with the tiny model and as few compilations as cover them (XLA's CPU compiles
# dominate its time: cheap LLVM settings, one method for the memory search and the attention variants);
# aot_eager exercises torch.compile's tracing without a C compiler; memory is searched against a synthetic limit.
SMOKE_PROFILE = Profile(model="tiny", open_clip_model=None, batch=8, inference_batch=8, warmup=0, steps=2,
                        rounds=1, matmul_sizes=(128,), memory_start=4, memory_granularity=4, memory_methods=("none",),
                        memory_threads=2, memory_max_probes=4, attention_methods=("none",), flag_methods=("none",),
                        budget_s=1800.0, compile_threads=2, torch_compile_min_s=0.0, torch_compile_backend="aot_eager",
                        xla_flags="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
SMOKE_MEMORY_LIMIT_MIB = 160


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str, document) -> None:
    from elip_jax.fileio import atomic_write_json
    atomic_write_json(path, document)


def block_modules(names) -> None:
    """Makes `import name` fail as on a machine without it (the GPU image lacks these)."""
    for name in names:
        sys.modules[name] = None


def ratio(value, baseline) -> Optional[float]:
    return None if value is None or not baseline else value / baseline


# ============================================================================================ JAX: shared parts

def jax_device() -> dict:
    import jax
    device = jax.devices()[0]
    info = {"backend": jax.default_backend(), "device": f"{device.platform}: {device.device_kind}",
            "device_kind": device.device_kind, "device_count": jax.device_count(), "jax_version": jax.__version__,
            "host_cpu_count": os.cpu_count(), "python": platform.python_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    for module in ("jaxlib", "flax", "optax"):
        with contextlib.suppress(Exception):
            info[f"{module}_version"] = importlib.import_module(module).__version__
    info["memory_limit_bytes"] = device_memory_limit()
    return info


def device_memory_limit() -> Optional[int]:
    """The allocator's limit on the first device (XLA_PYTHON_CLIENT_MEM_FRACTION of its memory); None on CPU."""
    import jax
    with contextlib.suppress(Exception):
        stats = jax.devices()[0].memory_stats()
        if stats and stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    return None


def spec_peak(device_kind: str) -> Optional[float]:
    for name, peak in SPEC_BF16_PEAK.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def measure_matmul_peak(sizes) -> dict:
    """The best bf16 matmul rate over n x n x n products (fp32 accumulation), ~0.3 s of work per size."""
    import jax
    import jax.numpy as jnp
    rates = {}
    for n in sizes:
        keys = jax.random.split(jax.random.PRNGKey(n))
        a = jax.random.normal(keys[0], (n, n), jnp.bfloat16)
        b = jax.random.normal(keys[1], (n, n), jnp.bfloat16)
        product = jax.jit(jnp.matmul).lower(a, b).compile()
        jax.block_until_ready(product(a, b))
        start = time.perf_counter()
        jax.block_until_ready(product(a, b))
        once = time.perf_counter() - start
        iterations = max(3, min(500, int(0.3 / max(once, 1e-6))))
        start = time.perf_counter()
        out = None
        for _ in range(iterations):
            out = product(a, b)
        jax.block_until_ready(out)
        rates[str(n)] = 2.0 * n ** 3 * iterations / (time.perf_counter() - start)
    return {"flops_per_s": max(rates.values()), "by_size": rates, "dtype": "bfloat16",
            "how": "jit(jnp.matmul) of two n x n bf16 arrays, back to back, one sync; best size"}


def methods_offered() -> list[str]:
    """Every reduction method the package registers, `none` first."""
    from elip_jax.reduction import METHODS
    return ["none"] + [m for m in METHODS if m != "none"]


def load_trainer_step():
    """The trainer's step module, and how it was imported.

    `elip_jax.train.step` imports `normalize_images` from `elip_jax.data`, whose package __init__ pulls in the
    input pipelines (ml_collections, grain, TFDS), which the GPU image lacks. The step needs only
    `elip_jax.data.normalize` (jax alone), so where the package cannot be imported it is replaced by a bare
    package that loads just that module.
    """
    try:
        return importlib.import_module("elip_jax.train.step"), "elip_jax.train.step"
    except ImportError as error:
        reason = f"{type(error).__name__}: {error}"
    import elip_jax
    for name in [n for n in sys.modules if n == "elip_jax.data" or n.startswith("elip_jax.train.step")]:
        del sys.modules[name]
    path = [os.path.join(os.path.dirname(elip_jax.__file__), "data")]
    package = types.ModuleType("elip_jax.data")
    package.__path__ = path
    package.__spec__ = importlib.machinery.ModuleSpec("elip_jax.data", None, is_package=True)
    package.__spec__.submodule_search_locations = path
    sys.modules["elip_jax.data"] = package
    package.normalize_images = importlib.import_module("elip_jax.data.normalize").normalize_images
    module = importlib.import_module("elip_jax.train.step")
    return module, f"elip_jax.train.step with elip_jax.data reduced to elip_jax.data.normalize ({reason})"


def make_optimizer():
    """The trainer's optimizer and learning-rate schedule, called as elip_jax/train/loop.py calls them (the
    optimizer takes the run length in some versions of optim.py, not in others)."""
    import inspect
    from elip_jax.train.optim import learning_rate_schedule, make_optimizer as trainer_optimizer
    optim = types.SimpleNamespace(**OPTIMIZER)
    takes_steps = len(inspect.signature(trainer_optimizer).parameters) > 1
    tx = trainer_optimizer(optim, SCHEDULE_STEPS) if takes_steps else trainer_optimizer(optim)
    return tx, learning_rate_schedule(optim, SCHEDULE_STEPS)


def create_model(name: str, method: str, remat: bool = False):
    import elip_jax
    return elip_jax.create_model(name, reduction=method, dtype="bfloat16", remat=remat)


def synthetic_batch(config, batch: int, seed: int = 0) -> dict:
    """uint8 images and CLIP-tokenised-looking captions (SOT, word ids, EOT, padding), on the device."""
    import jax
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, config.image_size, config.image_size, 3), dtype=np.uint8)
    tokens = np.zeros((batch, config.context_length), np.int32)
    length = min(CAPTION_LENGTH, config.context_length)
    tokens[:, 0], tokens[:, length - 1] = SOT, EOT
    tokens[:, 1:length - 1] = rng.integers(1, SOT, (batch, length - 2))
    return jax.device_put({"images": images, "tokens": tokens})


def abstract_batch(config, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    return {"images": jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.uint8),
            "tokens": jax.ShapeDtypeStruct((batch, config.context_length), jnp.int32)}


def abstract_params(model):
    import jax
    import jax.numpy as jnp
    c = model.config
    return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32),
                          jax.ShapeDtypeStruct((1, c.context_length), jnp.int32))["params"]


def memory_of(compiled) -> Optional[dict]:
    """XLA's memory analysis: bytes of arguments, outputs, aliased (donated) buffers, temporaries and code, and
    the peak while the program runs (XLA's own figure where it gives one, else args + outputs - aliased + temp)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends raise instead of returning nothing
        return None
    if stats is None:
        return None
    names = ("argument", "output", "alias", "temp", "generated_code")
    out = {name: int(getattr(stats, f"{name}_size_in_bytes", 0) or 0) for name in names}
    estimate = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
    reported = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    out.update(estimated_peak=estimate, xla_peak=reported or None, peak=max(estimate, reported))
    return out


def xla_flops(compiled_or_lowered) -> Optional[float]:
    from elip_jax.accounting import xla_flops as read_flops
    return read_flops(compiled_or_lowered)


def einsum_attention(q, k, v, mask=None, is_causal=False, bias=None):
    """Plain scaled dot-product attention on [B, T, H, dh]: einsum logits in fp32 (plus an additive bias, as
    the model's proportional attention passes), softmax, einsum. The model's `attention` has this signature."""
    import jax
    import jax.numpy as jnp
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if is_causal:
        causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probabilities = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probabilities, v)


def cudnn_attention(q, k, v, mask=None, is_causal=False, bias=None):
    import jax
    if bias is not None:
        bias = bias.astype(q.dtype)  # cuDNN takes the bias in the inputs' dtype
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal,
                                        implementation="cudnn")


@contextlib.contextmanager
def attention_implementation(variant: str):
    """Traces the model with another attention function: the model offers no option for it, so the module
    global its layers call is swapped while tracing (traces happen on one thread; compiles may run in parallel)."""
    from elip_jax.models import layers
    replacement = {"model": None, "cudnn": cudnn_attention, "einsum": einsum_attention}[variant]
    original = layers.attention
    if replacement is not None:
        layers.attention = replacement
    try:
        yield
    finally:
        layers.attention = original


@dataclasses.dataclass
class Program:
    """One compiled step and the state it steps."""

    key: str
    method: str
    compiled: Any
    state: Any
    batch: Any
    compile_s: float
    times: list = dataclasses.field(default_factory=list)


def interleaved_rounds(programs: list, steps: int, rounds: int, deadline: float, after_round: Callable) -> None:
    """`rounds` rounds, each running every program `steps` times with one sync; programs take turns inside a
    round, so slow drift hits them alike. Stops before a round that would overrun the deadline."""
    import jax
    last_round_s = 0.0
    for _ in range(rounds):
        if programs[0].times and time.time() + 1.2 * last_round_s > deadline:
            break
        round_start = time.perf_counter()
        for program in programs:
            start = time.perf_counter()
            state, metrics = program.state, None
            for _ in range(steps):
                state, metrics = program.compiled(state, program.batch)
            jax.block_until_ready((state, metrics))
            program.state = state
            program.times.append((time.perf_counter() - start) / steps)
        last_round_s = time.perf_counter() - round_start
        after_round()


def timing_summary(times: list, batch: int, flops: Optional[float], peak: Optional[float],
                   spec: Optional[float]) -> dict:
    if not times:
        return {"step_s": None}
    median = statistics.median(times)
    achieved = None if flops is None else flops / median
    return {"step_s": {"median": median, "min": min(times), "all": times}, "images_per_s": batch / median,
            "flops_per_s": achieved, "tflops": None if achieved is None else achieved / 1e12,
            "mfu": ratio(achieved, peak), "mfu_vs_spec": ratio(achieved, spec)}


# ============================================================================================ JAX: train worker

class TrainBench:
    """Compiles the trainer's step for several (method, attention) programs and times them interleaved."""

    def __init__(self, spec: dict, result: dict, save: Callable):
        import jax
        self.spec, self.result, self.save = spec, result, save
        self.deadline = spec["deadline"]
        self.step_module, result["trainer_step"] = load_trainer_step()
        self.tx, self.schedule = make_optimizer()
        self.models = {}
        self.params = None
        self.peak = spec.get("peak_flops_per_s")
        self.spec_peak = spec_peak(jax.devices()[0].device_kind)
        self.pool = ThreadPoolExecutor(max(1, spec["compile_threads"]))
        self.batch_size = spec["batch"]
        self.batch = None

    def model(self, method: str):
        if method not in self.models:
            self.models[method] = create_model(self.spec["model"], method)
        return self.models[method]

    def fresh_state(self, method: str):
        """Initial train state: `none`'s parameters (copied, as steps donate them) when the method has the
        same parameter tree, else its own."""
        import jax
        if self.params is None:
            self.params = self.init_params("none")
        params = self.params
        shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype)), tree)
        if method != "none" and shapes(abstract_params(self.model(method))) != shapes(params):
            params = self.init_params(method)
        # jit, as the trainer does: distinct output buffers (init_state shares one zero among its counters,
        # which a donating step would donate twice) and a copy of the shared parameters.
        return jax.jit(lambda p: self.step_module.init_state(p, self.tx, seed=0))(params)

    def init_params(self, method: str):
        import jax
        import jax.numpy as jnp
        model = self.model(method)
        c = model.config
        init = jax.jit(lambda key: model.init(key, jnp.zeros((1, c.image_size, c.image_size, 3), jnp.float32),
                                              jnp.zeros((1, c.context_length), jnp.int32))["params"])
        return init(jax.random.PRNGKey(0))

    def lower(self, method: str, attention: str = "model"):
        import jax
        model = self.model(method)
        train_step = self.step_module.make_train_step(model, self.tx, self.schedule, loss_name="clip",
                                                      logit_scale_max=LOGIT_SCALE_MAX, grad_accum_steps=1)
        state = self.fresh_state(method)
        with attention_implementation(attention):
            lowered = jax.jit(train_step, donate_argnums=(0,)).lower(state, self.batch)
        return lowered, state

    def compile_many(self, jobs: list) -> dict:
        """{key: Program or error text} for jobs [(key, method, attention)]: traced here, compiled in threads."""
        lowered, out = {}, {}
        for key, method, attention in jobs:
            try:
                lowered[key] = (method,) + self.lower(method, attention)
            except Exception as error:  # a method or an attention kernel that does not build here
                out[key] = f"{type(error).__name__}: {error}"

        def compile_one(key):
            method, low, state = lowered[key]
            start = time.perf_counter()
            compiled = low.compile()
            return Program(key, method, compiled, state, self.batch, time.perf_counter() - start)

        futures = {key: self.pool.submit(compile_one, key) for key in lowered}
        for key, future in futures.items():
            try:
                out[key] = future.result()
            except Exception as error:
                out[key] = f"{type(error).__name__}: {error}"
        return out

    def first_step(self, program: Program) -> dict:
        """Runs the first step (and the warm-up) and returns its metrics, read back once."""
        import jax
        program.state, metrics = program.compiled(program.state, program.batch)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        for _ in range(self.spec["warmup"]):
            program.state, _ = program.compiled(program.state, program.batch)
        jax.block_until_ready(program.state)
        return metrics

    def describe(self, program: Program, metrics: dict) -> dict:
        from elip_jax.accounting import tokens_per_block
        model = self.model(program.method)
        return {"status": "compiled", "compile_s": program.compile_s, "xla_flops": xla_flops(program.compiled),
                "memory": memory_of(program.compiled), "first_step": metrics,
                "tokens_per_block": tokens_per_block(model.reduction)}

    def fit_batch(self) -> Program:
        """Compiles `none` at the requested batch, halving it while XLA says the step would not fit."""
        from elip_jax.models import get_config
        config = get_config(self.spec["model"])
        limit = device_memory_limit()
        adjustments = self.result.setdefault("batch_adjustments", [])
        while True:
            self.batch = synthetic_batch(config, self.batch_size)
            program = self.compile_many([("none", "none", "model")])["none"]
            if isinstance(program, str):
                raise RuntimeError(f"the none step does not compile: {program}")
            peak = (memory_of(program.compiled) or {}).get("peak")
            if limit is None or peak is None or peak <= limit or self.batch_size <= 8:
                return program
            adjustments.append({"batch": self.batch_size, "peak_bytes": peak, "limit_bytes": limit})
            self.batch_size //= 2

    def record(self, table: dict, programs: list, baseline_of: Callable) -> None:
        for program in programs:
            entry = table[program.key]
            entry.update(timing_summary(program.times, self.batch_size, entry["xla_flops"], self.peak,
                                        self.spec_peak))
            base = baseline_of(program)
            if base is not None and program.times and base.times:
                entry["time_ratio"] = statistics.median(program.times) / statistics.median(base.times)
                entry["speedup"] = 1.0 / entry["time_ratio"]
                entry["time_ratio_against"] = base.key
        self.save()

    def run_methods(self, methods: list, none_program: Program) -> dict:
        """Every method with the model's own attention; ratios against `none` from the same rounds."""
        table = self.result.setdefault("methods", {})
        programs = {"none": none_program}
        compiled = self.compile_many([(m, m, "model") for m in methods if m != "none"])
        for method in methods:
            program = programs.get(method) or compiled[method]
            if isinstance(program, str):
                table[method] = {"status": "failed", "error": program}
                continue
            programs[method] = program
            first = self.result["none_alone"]["first_step"] if method == "none" else self.first_step(program)
            table[method] = self.describe(program, first)
        self.save()
        ordered = list(programs.values())
        interleaved_rounds(ordered, self.spec["steps"], self.spec["rounds"], self.deadline,
                           lambda: self.record(table, ordered, lambda p: programs["none"]))
        for entry in table.values():
            if entry.get("status") == "compiled":
                entry["status"] = "ok" if entry.get("step_s") else "not timed (out of time)"
        self.save()
        return programs

    def run_attention(self, methods: list, defaults: dict) -> None:
        """The same steps traced with cuDNN's and with plain einsum attention, against the model's own, with the
        first step's loss beside the default's (the same parameters and batch: equal up to rounding if exact)."""
        import jax
        table = self.result.setdefault("attention", {})
        variants = [v for v in ATTENTION_VARIANTS if v != "model"]
        if jax.default_backend() != "gpu":
            table["skipped"] = {"cudnn": "cuDNN attention needs a CUDA GPU"}
            variants = [v for v in variants if v != "cudnn"]
        jobs = [(f"{m}@{v}", m, v) for m in methods if m in defaults for v in variants]
        compiled = self.compile_many(jobs)
        programs = []
        for method in methods:
            if method not in defaults:
                continue
            default = defaults[method]
            default_entry = self.result["methods"][method]
            table[f"{method}@model"] = {**{k: default_entry.get(k) for k in ("xla_flops", "memory", "first_step")},
                                        "status": "ok"}
            default.times, default.key = [], f"{method}@model"
            programs.append(default)
            for variant in variants:
                key = f"{method}@{variant}"
                program = compiled[key]
                if isinstance(program, str):
                    table[key] = {"status": "failed", "error": program}
                    continue
                entry = self.describe(program, self.first_step(program))
                # cuDNN's fused kernel is a custom call XLA may not count: TFLOP/s use the model's own FLOPs.
                entry["xla_flops_compiled"] = entry["xla_flops"]
                entry["xla_flops"] = default_entry.get("xla_flops")
                base_loss = (default_entry.get("first_step") or {}).get("loss")
                entry["first_loss_difference"] = None if base_loss is None else entry["first_step"]["loss"] - base_loss
                table[key] = entry
                programs.append(program)
        self.save()
        by_key = {p.key: p for p in programs}
        interleaved_rounds(programs, self.spec["steps"], self.spec["rounds"], self.deadline,
                           lambda: self.record(table, programs, lambda p: by_key.get(f"{p.method}@model")))
        for entry in table.values():
            if entry.get("status") == "compiled":
                entry["status"] = "ok" if entry.get("step_s") else "not timed (out of time)"
        self.save()


def train_worker(spec: dict, result: dict, save: Callable) -> None:
    result["device"] = jax_device()
    save()
    if spec.get("measure_peak", True):
        result["peak"] = measure_matmul_peak(spec["matmul_sizes"])
        spec["peak_flops_per_s"] = result["peak"]["flops_per_s"]
        save()
    bench = TrainBench(spec, result, save)
    methods = [m for m in methods_offered() if spec.get("methods") is None or m in spec["methods"]]
    result.update(model=spec["model"], requested_batch=spec["batch"], dtype="bfloat16", optimizer=OPTIMIZER,
                  methods_offered=methods_offered(), steps_per_round=spec["steps"], rounds=spec["rounds"])
    none = bench.fit_batch()
    result["batch"] = bench.batch_size
    # A first look at `none` alone, kept should the other methods' compilation overrun the section's share.
    first = bench.first_step(none)
    interleaved_rounds([none], spec["steps"], 1, spec["deadline"], lambda: None)
    result["none_alone"] = {"first_step": first, **timing_summary(none.times, bench.batch_size,
                                                                   xla_flops(none.compiled), bench.peak,
                                                                   bench.spec_peak)}
    none.times = []
    save()
    started = time.time()
    programs = bench.run_methods(methods, none)
    attention_methods = [m for m in spec.get("attention_methods") or () if m in programs]
    if not attention_methods:
        return
    spent = time.time() - started  # what the methods took: the attention phase needs about its share of that
    expected = spent * (len(attention_methods) * 3) / max(len(programs), 1)
    if time.time() + expected > spec["deadline"]:
        result["attention"] = {"skipped": f"not enough time left (needs about {expected:.0f} s)"}
        save()
        return
    bench.run_attention(attention_methods, {m: programs[m] for m in attention_methods})


# ============================================================================================ JAX: memory worker

def largest_fitting(peak_of: Callable[[int], int], limit: int, start: int, granularity: int,
                    max_probes: int = 8) -> dict:
    """The largest multiple of `granularity` whose peak fits in `limit`: probes at `start` and `2 * start`, then
    at the batch the line through the two nearest probes predicts, clamped inside the bracket of the largest
    batch that fits and the smallest that does not (bisection when the line is no help)."""
    g = granularity
    probes = {}

    def probe(batch):
        probes[batch] = peak_of(batch)

    def bracket():
        fitting = [b for b, v in probes.items() if v <= limit]
        failing = [b for b, v in probes.items() if v > limit]
        return max(fitting, default=0), min(failing, default=None)

    for batch in (start, 2 * start):
        probe(batch)
    outcomes = []  # fits or not, for each guess: two alike in a row inside a bracket -> bisect
    while len(probes) < max_probes:
        lo, hi = bracket()
        if hi is not None and hi - lo <= g:
            break
        ordered = sorted(probes)
        if hi is None:
            pair = ordered[-2:]  # everything fits so far: extrapolate from the largest two
        elif lo == 0:
            pair = ordered[:2]  # nothing fits: from the smallest two
        else:
            pair = [lo, hi]  # the bracket's ends
        (b1, m1), (b2, m2) = [(b, probes[b]) for b in pair]
        slope = (m2 - m1) / (b2 - b1)
        guess = int((limit - m1) / slope + b1) // g * g if slope > 0 else None
        bisect = hi is not None and (guess is None or (len(outcomes) >= 2 and outcomes[-1] == outcomes[-2]))
        if bisect:
            guess = (lo + hi) // 2 // g * g
        elif guess is None:
            guess = max(2 * lo, g)
        guess = max(guess, lo + g)
        guess = min(guess, hi - g) if hi is not None else min(guess, 16 * max(probes))
        if guess in probes or guess <= 0:
            break
        probe(guess)
        outcomes.append(probes[guess] <= limit)
    lo, hi = bracket()
    points = sorted(probes.items())
    fit = None
    if len(points) >= 2:
        (b1, m1), (b2, m2) = points[0], points[-1]
        slope = (m2 - m1) / (b2 - b1)
        fit = {"bytes_per_image": slope, "fixed_bytes": m1 - slope * b1}
    return {"largest_batch": lo, "smallest_failing_batch": hi, "exact": hi is not None and hi - lo <= g,
            "granularity": g, "probes": [{"batch": b, "peak_bytes": v, "fits": v <= limit} for b, v in points],
            "linear_fit": fit}


def memory_worker(spec: dict, result: dict, save: Callable) -> None:
    import jax
    result["device"] = jax_device()
    limit = spec.get("memory_limit_bytes") or device_memory_limit()
    if not limit:
        raise RuntimeError("no device memory limit: pass --memory-limit-mib on a backend that reports none")
    result.update(limit_bytes=limit, limit_source=spec.get("memory_limit_source") or "jax bytes_limit of device 0",
                  how="XLA memory analysis of the compiled train step (compile only): arguments + outputs - "
                      "donated + temporaries + code, against the limit")
    step_module, result["trainer_step"] = load_trainer_step()
    tx, schedule = make_optimizer()
    methods = [m for m in methods_offered() if spec.get("methods") is None or m in spec["methods"]]
    configs = result.setdefault("configs", {})
    lock = threading.Lock()

    def search(method: str, remat: bool) -> None:
        key = "remat" if remat else "no_remat"
        entry = configs.setdefault(method, {}).setdefault(key, {"status": "running", "probes": []})
        try:
            model = create_model(spec["model"], method, remat=remat)
            with lock:
                state = jax.eval_shape(lambda p: step_module.init_state(p, tx, seed=0), abstract_params(model))
            train_step = step_module.make_train_step(model, tx, schedule, loss_name="clip",
                                                     logit_scale_max=LOGIT_SCALE_MAX, grad_accum_steps=1)

            def peak_of(batch: int) -> int:
                if time.time() > spec["deadline"] - 2.0:
                    raise TimeoutError("out of time")
                start = time.perf_counter()
                with lock:  # tracing swaps no globals here, but Flax tracing on many threads is not worth a risk
                    lowered = jax.jit(train_step, donate_argnums=(0,)).lower(state, abstract_batch(model.config,
                                                                                                   batch))
                memory = memory_of(lowered.compile())
                if memory is None:
                    raise RuntimeError("this backend gives no memory analysis")
                with lock:
                    entry["probes"].append({"batch": batch, "peak_bytes": memory["peak"], "fits": memory["peak"] <= limit,
                                            "memory": memory, "compile_s": time.perf_counter() - start})
                    save()
                return memory["peak"]

            found = largest_fitting(peak_of, limit, spec["memory_start"], spec["memory_granularity"],
                                    spec["memory_max_probes"])
            with lock:
                found.pop("probes")  # entry["probes"] has them, with XLA's memory analysis of each
                entry.update(found, status="ok")
        except Exception as error:
            with lock:
                fits = [p["batch"] for p in entry["probes"] if p["fits"]]
                entry.update(status="partial" if entry["probes"] else "failed",
                             error=f"{type(error).__name__}: {error}", largest_batch_at_least=max(fits, default=0))
        with lock:
            save()

    jobs = [(m, remat) for remat in (False, True) for m in methods]
    with ThreadPoolExecutor(max(1, spec["memory_threads"])) as pool:
        for future in [pool.submit(search, m, r) for m, r in jobs]:
            future.result()


# ============================================================================================ JAX: inference worker

def inference_worker(spec: dict, result: dict, save: Callable) -> None:
    """Image-tower forward, bf16 compute, fp32 parameters (as evaluation runs it), normalised images on device.
    Measured: `none` and every method whose traced forward without a caption or key costs fewer FLOPs."""
    import jax
    import jax.numpy as jnp
    result["device"] = jax_device()
    peak, spec_rate = spec.get("peak_flops_per_s"), spec_peak(jax.devices()[0].device_kind)
    batch = spec["inference_batch"]
    result.update(model=spec["model"], batch=batch, dtype="bfloat16")
    methods = methods_offered()
    table = result.setdefault("methods", {})
    lowered = {}
    params = None
    images = None
    for method in methods:
        try:
            model = create_model(spec["model"], method)
            c = model.config
            if params is None:
                images = jax.random.normal(jax.random.PRNGKey(1), (batch, c.image_size, c.image_size, 3),
                                           jnp.bfloat16)
                params = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1],
                                             jnp.zeros((1, c.context_length), jnp.int32))
            forward = jax.jit(lambda variables, x, model=model: model.apply(variables, x,
                                                                            method=model.encode_image))
            lowered[method] = forward.lower(params, images)
        except Exception as error:
            table[method] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    none_flops = xla_flops(lowered["none"]) if "none" in lowered else None
    measured = []
    for method, low in lowered.items():
        flops = xla_flops(low)
        if method != "none" and none_flops and flops is not None and flops >= 0.995 * none_flops:
            table[method] = {"status": "not measured: does not reduce tokens at inference (no caption, no key)",
                             "traced_flops": flops}
            continue
        measured.append(method)
    programs = []
    for method in measured:
        start = time.perf_counter()
        compiled = lowered[method].compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(params, images))
        for _ in range(spec["warmup"]):
            jax.block_until_ready(compiled(params, images))
        programs.append(Program(method, method, compiled, params, images, compile_s))
        table[method] = {"status": "compiled", "compile_s": compile_s, "xla_flops": xla_flops(compiled)}
    save()

    def forward_rounds():
        for _ in range(spec["rounds"]):
            if programs[0].times and time.time() + 1.2 * sum(p.times[-1] * spec["steps"] for p in programs) \
                    > spec["deadline"]:
                return
            for program in programs:
                start = time.perf_counter()
                out = None
                for _ in range(spec["steps"]):
                    out = program.compiled(program.state, program.batch)
                jax.block_until_ready(out)
                program.times.append((time.perf_counter() - start) / spec["steps"])
            record()

    def record():
        base = programs[0]
        for program in programs:
            entry = table[program.key]
            entry.update(timing_summary(program.times, batch, entry["xla_flops"], peak, spec_rate))
            entry["time_ratio"] = statistics.median(program.times) / statistics.median(base.times)
            entry["speedup"] = 1.0 / entry["time_ratio"]
            entry["status"] = "ok"
        save()

    if programs:
        forward_rounds()


# ============================================================================================ torch: open_clip

def prepare_open_clip_imports() -> dict:
    """Makes `import open_clip` work where parts of its dependencies are missing, and says what stood in.

    - torchvision (its image transforms only) on a CPU test machine: tests/torch_stubs.py's stand-in;
    - ftfy and regex (its tokenizer only; this benchmark feeds token ids): stand-ins that fail if used.
    """
    stand_ins = {}
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        import torch_stubs
        torch_stubs.install_torchvision_stub()
        stand_ins["torchvision"] = "tests/torch_stubs.py (image transforms unused here)"
    for name in ("ftfy", "regex"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _unusable_module(name)
            stand_ins[name] = "stand-in (open_clip's tokenizer is not used: the captions are token ids)"
    return stand_ins


def _unusable_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)

    class Unusable:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, attribute):
            raise NotImplementedError(f"{name} is a stand-in in benchmarks/gpu.py; it cannot be used")

    def attribute_of(attribute):  # regex.compile(...), regex.IGNORECASE: what open_clip touches on import
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return Unusable

    module.__getattr__ = attribute_of
    return module


def build_open_clip(spec: dict, device):
    import open_clip
    if spec.get("open_clip_model"):
        return open_clip.create_model(spec["open_clip_model"], pretrained=None, device=device, output_dict=True), \
            spec["open_clip_model"]
    c = spec["elip_config"]  # open_clip's CLIP with the elip_jax architecture's shapes (no download)
    vision = dict(image_size=c["image_size"], patch_size=c["patch_size"], width=c["vision_width"],
                  layers=c["vision_layers"], head_width=c["vision_width"] // c["vision_heads"],
                  mlp_ratio=c["mlp_ratio"])
    text = dict(context_length=c["context_length"], vocab_size=c["vocab_size"], width=c["text_width"],
                heads=c["text_heads"], layers=c["text_layers"], mlp_ratio=c["mlp_ratio"])
    model = open_clip.CLIP(embed_dim=c["embed_dim"], vision_cfg=vision, text_cfg=text,
                           quick_gelu=c["activation"] == "quick_gelu", output_dict=True)
    return model.to(device), f"open_clip.CLIP built from elip_jax's {spec['model']!r} config"


def open_clip_optimizer(model, torch):
    """open_clip's training/main.py: AdamW, no weight decay for gains, biases and the logit scale."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": OPTIMIZER["weight_decay"]}]
    return torch.optim.AdamW(groups, lr=OPTIMIZER["lr"], betas=(OPTIMIZER["b1"], OPTIMIZER["b2"]),
                             eps=OPTIMIZER["eps"])


def open_clip_worker(spec: dict, result: dict, save: Callable) -> None:
    """open_clip's training step (training/train.py's train_one_epoch, without data loading or logging), timed
    in rounds with one synchronisation each; with spec['compile'], the model goes through torch.compile."""
    import torch
    result["stand_ins"] = prepare_open_clip_imports()
    import open_clip
    from open_clip.loss import ClipLoss
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    result["device"] = {"backend": "gpu" if cuda else "cpu",
                        "device": f"{device}: {torch.cuda.get_device_name(0) if cuda else platform.processor() or 'cpu'}",
                        "torch_version": torch.__version__, "open_clip_version": open_clip.__version__,
                        "cuda_version": torch.version.cuda, "python": platform.python_version()}
    save()
    if cuda:
        with contextlib.suppress(Exception):
            result["torch_matmul_flops_per_s"] = torch_matmul_rate(torch, max(spec["matmul_sizes"]))
    torch.manual_seed(0)
    model, built = build_open_clip(spec, device)
    model.train()
    result.update(model=built, precision="fp32 parameters, bf16 autocast", compile=spec["compile"],
                  parameters=sum(p.numel() for p in model.parameters()))
    optimizer = open_clip_optimizer(model, torch)
    loss_fn = ClipLoss()
    forward = model
    if spec["compile"]:
        forward = torch.compile(model, backend=spec["torch_compile_backend"])
        result["compile_backend"] = spec["torch_compile_backend"]
    autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def inputs(batch):
        c = spec["elip_config"]
        g = torch.Generator(device="cpu").manual_seed(0)
        images = torch.randn(batch, 3, c["image_size"], c["image_size"], generator=g).to(device)
        tokens = torch.zeros(batch, c["context_length"], dtype=torch.long)
        length = min(CAPTION_LENGTH, c["context_length"])
        tokens[:, 0], tokens[:, length - 1] = SOT, EOT
        tokens[:, 1:length - 1] = torch.randint(1, SOT, (batch, length - 2), generator=g)
        return images, tokens.to(device)

    def step(images, texts):
        optimizer.zero_grad()
        with autocast():
            out = forward(images, texts)
            total = sum(loss_fn(**out, output_dict=True).values())
        total.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))
        return total

    batch = spec["batch"]
    while True:
        try:
            images, texts = inputs(batch)
            result["status_detail"] = "first step (compiling)" if spec["compile"] else "first step"
            save()
            start = time.perf_counter()
            first_loss = float(step(images, texts).detach())
            sync()
            result["first_step_s"] = time.perf_counter() - start
            break
        except torch.cuda.OutOfMemoryError:
            result.setdefault("batch_adjustments", []).append({"batch": batch, "error": "CUDA out of memory"})
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if batch <= 8:
                raise
            batch //= 2
    result.update(batch=batch, first_loss=first_loss)
    for _ in range(max(spec["warmup"], 2 if spec["compile"] else 0)):  # compiled: the second step settles guards
        step(images, texts)
    sync()
    times = []
    for _ in range(spec["rounds"]):
        if times and time.time() + 1.2 * times[-1] * spec["steps"] > spec["deadline"]:
            break
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            step(images, texts)
        sync()
        times.append((time.perf_counter() - start) / spec["steps"])
        result.update(timing_summary(times, batch, None, None, None))
        if cuda:
            result["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
        save()
    result.pop("status_detail", None)


def torch_matmul_rate(torch, n: int) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    torch.matmul(a, b)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    return 2.0 * n ** 3 * 20 / (time.perf_counter() - start)


WORKERS = {"train": train_worker, "memory": memory_worker, "inference": inference_worker,
           "open_clip": open_clip_worker}


def worker_main(kind: str, spec_path: str, result_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    block_modules(spec.get("block_modules", ()))
    result = {"kind": kind, "started": now_iso(), "complete": False}
    save = lambda: write_json(result_path, result)
    save()
    try:
        WORKERS[kind](spec, result, save)
        result["complete"] = True
        return 0
    except BaseException as error:  # recorded, then the coordinator sees the exit code
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-4000:]
        return 1
    finally:
        result["finished"] = now_iso()
        save()


# ============================================================================================ coordinator

class Section:
    """A worker process with a deadline: stopped (SIGTERM, then SIGKILL) when it overruns."""

    def __init__(self, name: str, kind: str, spec: dict, deadline: float, out: str, env: dict):
        self.name, self.deadline, self.start = name, deadline, time.time()
        workers, logs = os.path.join(out, "workers"), os.path.join(out, "logs")
        os.makedirs(workers, exist_ok=True)
        os.makedirs(logs, exist_ok=True)
        self.result_path = os.path.join(workers, f"{name}.json")
        self.log_path = os.path.join(logs, f"{name}.log")
        spec_path = os.path.join(workers, f"{name}.spec.json")
        write_json(spec_path, {**spec, "deadline": deadline})
        command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--spec", spec_path,
                   "--result", self.result_path]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                        start_new_session=True)

    def finish(self) -> dict:
        timed_out = False
        try:
            code = self.process.wait(timeout=max(0.0, self.deadline - time.time()))
        except subprocess.TimeoutExpired:
            timed_out = True
            code = self.stop()
        self.log.close()
        result = {}
        with contextlib.suppress(Exception), open(self.result_path) as f:
            result = json.load(f)
        if timed_out:
            status = "timed out (partial results kept)"
        elif code == 0 and result.get("complete"):
            status = "complete"
        else:
            status = f"failed (exit code {code})"
        record = {"status": status, "wall_s": time.time() - self.start, "exit_code": code,
                  "log": os.path.relpath(self.log_path, os.path.dirname(os.path.dirname(self.result_path)))}
        if status.startswith("failed"):
            with contextlib.suppress(Exception), open(self.log_path) as f:
                record["log_tail"] = f.read()[-3000:]
        return {"section": record, "result": result}

    def stop(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def nvidia_smi() -> Optional[dict]:
    if not shutil.which("nvidia-smi"):
        return None
    with contextlib.suppress(Exception):
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
        name, total_mib, driver = [part.strip() for part in text.splitlines()[0].split(",")]
        return {"name": name, "memory_total_bytes": int(float(total_mib)) * 2 ** 20, "driver": driver}
    return None


def worker_env(extra: Optional[dict] = None, xla_flags: str = "") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    env.update(extra or {})
    return env


def coordinate(args, profile: Profile) -> dict:
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    start = time.time()
    budget = args.budget_s or profile.budget_s
    at = lambda fraction: start + fraction * budget
    smi = nvidia_smi()
    from elip_jax.models import get_config
    config = get_config(profile.model)
    base = {"model": profile.model, "batch": args.batch or profile.batch, "warmup": profile.warmup,
            "steps": profile.steps, "rounds": profile.rounds, "matmul_sizes": list(profile.matmul_sizes),
            "compile_threads": profile.compile_threads, "block_modules": list(args.block_modules),
            "elip_config": config.to_dict(), "open_clip_model": profile.open_clip_model,
            "inference_batch": profile.inference_batch, "torch_compile_backend": profile.torch_compile_backend}
    jax_env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": str(args.mem_fraction)}
    sections, results = {}, {}

    def log(message):
        print(f"[{time.time() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    # memory: compile only, beside the timed sections; little device memory (no preallocation, no autotuning)
    memory_spec = {**base, "memory_start": profile.memory_start, "memory_granularity": profile.memory_granularity,
                   "memory_threads": profile.memory_threads, "memory_max_probes": profile.memory_max_probes,
                   "methods": list(profile.memory_methods) if profile.memory_methods else None}
    if args.memory_limit_mib:
        memory_spec.update(memory_limit_bytes=int(args.memory_limit_mib * 2 ** 20),
                           memory_limit_source="--memory-limit-mib (synthetic)")
    elif smi:
        memory_spec.update(memory_limit_bytes=int(args.mem_fraction * smi["memory_total_bytes"]),
                           memory_limit_source=f"{args.mem_fraction} (XLA_PYTHON_CLIENT_MEM_FRACTION of the "
                                               "timed sections) x nvidia-smi memory.total")
    memory = None
    if "memory" in args.sections:
        log("memory: started beside the others (compile only)")
        memory = Section("memory", "memory", memory_spec, at(MEMORY_END), out,
                         worker_env({"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **jax_env},
                                    f"{profile.xla_flags} --xla_gpu_autotune_level=0"))

    def run(name, kind, spec, end, env, skip_if_less_than=0.0):
        if name.split(":")[0] not in args.sections:
            sections[name] = {"status": "skipped: not among --sections"}
            return {}
        left = at(end) - time.time()
        if left < max(skip_if_less_than, 1.0):
            sections[name] = {"status": f"skipped: {left:.0f} s of its share left, needs {skip_if_less_than:.0f} s"}
            log(f"{name}: {sections[name]['status']}")
            return {}
        log(f"{name}: started, {left:.0f} s")
        done = Section(name.replace(":", "-"), kind, spec, at(end), out, env).finish()
        sections[name] = done["section"]
        log(f"{name}: {done['section']['status']} after {done['section']['wall_s']:.0f} s")
        return done["result"]

    train = run("train", "train", {**base, "attention_methods": list(profile.attention_methods)},
                SECTION_ENDS["train"], worker_env(jax_env, profile.xla_flags))
    results["train"] = train
    batch = train.get("batch", base["batch"])
    peak = (train.get("peak") or {}).get("flops_per_s")
    after_train = {**base, "batch": batch, "peak_flops_per_s": peak}
    results["open_clip"] = run("open_clip", "open_clip", {**after_train, "compile": False},
                               SECTION_ENDS["open_clip"], worker_env())
    results["inference"] = run("inference", "inference", after_train, SECTION_ENDS["inference"],
                               worker_env(jax_env, profile.xla_flags))
    results["flags"] = {}
    flags = dict(FLAG_VARIANTS)
    window = SECTION_ENDS["flags"] - SECTION_ENDS["inference"]
    for i, (name, flag) in enumerate(flags.items()):
        end = SECTION_ENDS["inference"] + window * (i + 1) / len(flags)
        spec = {**after_train, "methods": list(profile.flag_methods), "measure_peak": False,
                "attention_methods": [], "xla_flags": flag}
        results["flags"][name] = run(f"flags:{name}", "train", spec, end, worker_env(jax_env, f"{profile.xla_flags} {flag}"))
    results["torch_compile"] = run("torch_compile", "open_clip", {**after_train, "compile": True},
                                   SECTION_ENDS["torch_compile"], worker_env(),
                                   skip_if_less_than=profile.torch_compile_min_s)
    if memory is not None:
        log("memory: waiting for it")
        done = memory.finish()
        sections["memory"], results["memory"] = done["section"], done["result"]
    else:
        sections["memory"], results["memory"] = {"status": "skipped: not among --sections"}, {}
    document = assemble(args, profile, budget, start, smi, sections, results)
    write_json(os.path.join(out, "results.json"), document)
    table = summary_table(document)
    from elip_jax.fileio import atomic_write_text
    atomic_write_text(os.path.join(out, "summary.txt"), table + "\n")
    print(table)
    return document


# ============================================================================================ results

def assemble(args, profile, budget, start, smi, sections, results) -> dict:
    train = results.get("train") or {}
    device = dict(train.get("device") or (results.get("memory") or {}).get("device") or {})
    if smi:
        device["nvidia_smi"] = smi
    methods = train.get("methods") or {}
    none = methods.get("none") or {}
    batch = train.get("batch")
    flops_per_image = None if not none.get("xla_flops") or not batch else none["xla_flops"] / batch
    peak = (train.get("peak") or {}).get("flops_per_s")
    spec_rate = spec_peak(device.get("device_kind", ""))
    anchors = {}
    for name in ("open_clip", "torch_compile"):
        r = results.get(name) or {}
        if not r:
            continue
        rate = r.get("images_per_s")
        achieved = None if rate is None or flops_per_image is None else rate * flops_per_image
        anchors[name] = {**r, "flops_per_image_from": "elip_jax none step (XLA cost analysis), same architecture",
                         "flops_per_s": achieved, "tflops": None if achieved is None else achieved / 1e12,
                         "mfu": ratio(achieved, peak), "mfu_vs_spec": ratio(achieved, spec_rate),
                         "elip_none_speedup": ratio(none.get("images_per_s"), rate),
                         "same_batch": r.get("batch") == batch}
    flags = {}
    for name, r in (results.get("flags") or {}).items():
        entry = {"xla_flags": FLAG_VARIANTS.get(name), "methods": r.get("methods") or {}}
        entry["time_ratio_vs_default_flags"] = {
            m: ratio(((v.get("step_s") or {}).get("median")), ((methods.get(m) or {}).get("step_s") or {}).get("median"))
            for m, v in entry["methods"].items()}
        flags[name] = entry
    return {
        "schema_version": SCHEMA_VERSION, "created": now_iso(), "smoke": args.smoke, "budget_s": budget,
        "wall_s": time.time() - start, "command": sys.argv, "profile": dataclasses.asdict(profile),
        "device": device, "absolute_numbers_meaningful": device.get("backend") not in (None, "cpu"),
        "blocked_modules": list(args.block_modules),
        "peak": train.get("peak"), "spec_bf16_peak_flops_per_s": spec_rate, "flops_per_image_none": flops_per_image,
        "sections": sections,
        "train": train, "attention": train.get("attention") or {}, "flags": flags,
        "memory": results.get("memory") or {}, "inference": results.get("inference") or {},
        "open_clip": anchors.get("open_clip") or results.get("open_clip") or {},
        "torch_compile": anchors.get("torch_compile") or results.get("torch_compile") or {},
        "targets": targets(methods, anchors.get("open_clip")),
    }


def targets(methods: dict, anchor: Optional[dict]) -> dict:
    """Issue 13's moonshots, and where this run stands."""
    get = lambda m, k: (methods.get(m) or {}).get(k)
    checks = {"none_mfu": {"value": get("none", "mfu"), "target": 0.45, "at_least": True},
              "elip_speedup": {"value": get("elip", "speedup"), "target": 1.10, "at_least": True},
              "elip_inline_speedup": {"value": get("elip_inline", "speedup"), "target": 1.30, "at_least": True},
              "none_vs_open_clip_speedup": {"value": (anchor or {}).get("elip_none_speedup"), "target": 1.0,
                                            "at_least": True}}
    for check in checks.values():
        check["met"] = None if check["value"] is None else check["value"] >= check["target"]
    return checks


def _fmt(value, spec="{:.0f}", missing="n/a") -> str:
    return missing if value is None else spec.format(value)


def summary_table(d: dict) -> str:
    device = d.get("device") or {}
    train = d.get("train") or {}
    lines = [f"== issue 13 measurements: {device.get('device', 'unknown device')} | jax {device.get('jax_version', '?')}"
             f" | {train.get('model', '?')} bf16 | batch {train.get('batch', '?')} | {d['created']} =="]
    if not d["absolute_numbers_meaningful"]:
        lines.append("(smoke run on a CPU: check the plumbing only; absolute numbers mean nothing)")
    peak = d.get("peak") or {}
    lines.append(f"peak bf16 matmul (measured): {_fmt(peak.get('flops_per_s') and peak['flops_per_s'] / 1e12, '{:.1f}')}"
                 f" TFLOP/s; datasheet: {_fmt(d.get('spec_bf16_peak_flops_per_s') and d['spec_bf16_peak_flops_per_s'] / 1e12)}")
    lines.append("")
    header = ["train step", "img/s", "TFLOP/s", "MFU", "step ms", "vs none"]
    rows = []
    for method, r in (train.get("methods") or {}).items():
        step = (r.get("step_s") or {}).get("median")
        versus = _fmt(r.get("speedup"), "{:.2f}x") if step else r.get("status", "")[:40]
        rows.append([method, _fmt(r.get("images_per_s")), _fmt(r.get("tflops"), "{:.1f}"),
                     _fmt(r.get("mfu"), "{:.1%}"), _fmt(step and step * 1e3, "{:.1f}"), versus])
    for name in ("open_clip", "torch_compile"):
        r = d.get(name) or {}
        if r.get("images_per_s"):
            step = r["step_s"]["median"]
            rows.append([f"{name} (torch)", _fmt(r["images_per_s"]), _fmt(r.get("tflops"), "{:.1f}"),
                         _fmt(r.get("mfu"), "{:.1%}"), _fmt(step * 1e3, "{:.1f}"),
                         f"none is {_fmt(r.get('elip_none_speedup'), '{:.2f}x')}"])
    lines += _columns(header, rows)
    attention = d.get("attention") or {}
    if attention:
        lines.append("")
        parts = []
        for key, r in attention.items():
            if key == "skipped" or not isinstance(r, dict) or "status" not in r:
                continue
            step = (r.get("step_s") or {}).get("median")
            parts.append(f"{key} {_fmt(step and step * 1e3, '{:.1f}')} ms"
                         + (f" ({r['time_ratio']:.2f})" if r.get("time_ratio") and not key.endswith("@model") else "")
                         + ("" if step or r.get("status") == "ok" else f" [{r.get('status')}: {str(r.get('error', ''))[:60]}]"))
        if parts:
            lines.append("attention (step ms, ratio vs the model's own): " + "; ".join(parts))
        if isinstance(attention.get("skipped"), (dict, str)):
            lines.append(f"attention skipped: {attention['skipped']}")
    for name, r in (d.get("flags") or {}).items():
        ratios = ", ".join(f"{m} {_fmt(v, '{:.2f}')}" for m, v in r["time_ratio_vs_default_flags"].items())
        lines.append(f"XLA flags {name}: step time vs default flags: {ratios or 'n/a'}")
    memory = (d.get("memory") or {}).get("configs") or {}
    if memory:
        limit = (d.get("memory") or {}).get("limit_bytes")
        cells = []
        for method, r in memory.items():
            pick = lambda key: r.get(key, {}).get("largest_batch", r.get(key, {}).get("largest_batch_at_least"))
            cells.append(f"{method} {_fmt(pick('no_remat'))}/{_fmt(pick('remat'))}")
        lines.append(f"largest batch, no remat/remat (limit {_fmt(limit and limit / 2 ** 30, '{:.1f}')} GiB): "
                     + "; ".join(cells))
    inference = (d.get("inference") or {}).get("methods") or {}
    if inference:
        cells = [f"{m} {_fmt(r.get('images_per_s'))}" + (f" ({r['speedup']:.2f}x)" if r.get("speedup") and m != "none" else "")
                 for m, r in inference.items() if r.get("images_per_s")]
        lines.append(f"inference img/s (image tower, batch {d['inference'].get('batch')}): " + "; ".join(cells))
    lines.append("targets: " + "; ".join(
        f"{k} {_fmt(v['value'], '{:.3f}')} (>= {v['target']}) {'met' if v['met'] else 'missed' if v['met'] is False else 'n/a'}"
        for k, v in d["targets"].items()))
    lines.append("sections: " + "; ".join(f"{k} {v['status']}" + (f" {v['wall_s']:.0f} s" if "wall_s" in v else "")
                                          for k, v in d["sections"].items()))
    return "\n".join(lines)


def _columns(header, rows) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
    return [fmt(header)] + [fmt(r) for r in rows]


# ============================================================================================ command line

SECTIONS = ("train", "open_clip", "inference", "flags", "torch_compile", "memory")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/gpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="folder for results.json, summary.txt, workers/ and logs/")
    p.add_argument("--smoke", action="store_true", help="tiny model, two steps, every section (CPU, CI)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"wall-clock budget (default {GPU_PROFILE.budget_s:.0f} s; smoke {SMOKE_PROFILE.budget_s:.0f})")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 512; smoke 8)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--mem-fraction", type=float, default=0.9, help="XLA_PYTHON_CLIENT_MEM_FRACTION of the JAX sections")
    p.add_argument("--memory-limit-mib", type=float, default=None,
                   help=f"memory limit for the largest-batch search (default: the device's; smoke {SMOKE_MEMORY_LIMIT_MIB})")
    p.add_argument("--block-modules", default=None,
                   help="modules to make unimportable, as on the GPU image (smoke default: "
                        f"{','.join(GPU_IMAGE_LACKS)}; 'none' for none)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if not args.out:
        p.error("the output folder is required")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    blocked = args.block_modules if args.block_modules is not None else (",".join(GPU_IMAGE_LACKS) if args.smoke else "")
    args.block_modules = [] if blocked == "none" else [m.strip() for m in blocked.split(",") if m.strip()]
    if args.smoke and args.memory_limit_mib is None:
        args.memory_limit_mib = SMOKE_MEMORY_LIMIT_MIB
    if args.budget_s is not None and args.budget_s <= 0:
        p.error("--budget-s must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec, args.result)
    block_modules(args.block_modules)
    coordinate(args, SMOKE_PROFILE if args.smoke else GPU_PROFILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
