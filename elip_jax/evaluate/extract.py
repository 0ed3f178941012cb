"""The sharded loops: text embeddings for a list of token rows, and one image program over a whole split.

Every example is counted once: the eval iterator pads the last batches (mask False, index -1) so that every
process runs the same number of steps, and results are put back in dataset order by their 'index'.
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from elip_jax.evaluate import sharding
from elip_jax.reduction.methods import example_keys

# (variables, uint8 images [B, S, S, 3], example indices [B], *extra) -> {name: [B, ...]}
ImageProgram = Callable[..., dict]


def image_inputs(model, seed: int, index: jax.Array) -> dict:
    """What `encode_image` gets besides the images at evaluation, as the method asks: one key per example for
    a method that draws at evaluation (`random`: fold_in(PRNGKey(seed), index in the split), so an image's
    subset depends on nothing but the seed and the image's index), else nothing. No guide is ever given: text-guided
    methods (elip, elip_inline) do not prune here, an image is never guided by its own caption (docs/elip.md)."""
    schedule = getattr(model, "reduction", None)  # a stand-in model (tests) may have no schedule
    if schedule is None or not schedule.spec.evaluation_needs_keys:
        return {}
    return {"rng": example_keys(seed, index)}


def encode_image_program(model, seed: int = 0) -> Callable:
    """(variables, uint8 images [B, S, S, 3], example indices [B]) -> L2-normalised image embeddings [B, E], for
    use inside jit. Vision-only methods (evit) prune as scheduled; `random` with keys from `seed` and the
    indices (`image_inputs`); text-guided ones do not prune."""
    from elip_jax import data

    def encode(variables, images, index):
        pixels = data.normalize_images(images)
        return model.apply(variables, pixels, method=model.encode_image, normalize=True,
                           **image_inputs(model, seed, index))

    return encode


def text_embeddings(model, variables, tokens: np.ndarray, mesh: Mesh, batch_size: int = 256) -> np.ndarray:
    """L2-normalised text embeddings [N, E] (fp32, on the host of every process) of token rows [N, L].

    All processes must pass the same tokens. Rows are padded to whole sharded batches; the padding is dropped.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or not len(tokens):
        raise ValueError(f"tokens must be a non-empty int array [N, context_length]; got shape {tokens.shape}")
    count, devices = len(tokens), mesh.devices.size
    batch_size = -(-min(batch_size, count) // devices) * devices  # a multiple of the device count
    padded = -(-count // batch_size) * batch_size
    tokens = np.concatenate([tokens, np.zeros((padded - count, tokens.shape[1]), np.int32)])
    variables = sharding.replicate(variables, mesh)
    encode = text_encoder(model)
    chunks = [sharding.to_host(encode(variables, sharding.shard_host_batch(tokens[i:i + batch_size], mesh)))
              for i in range(0, padded, batch_size)]
    return np.concatenate(chunks)[:count].astype(np.float32)


@functools.lru_cache(maxsize=16)
def text_encoder(model):
    """jit((variables, tokens) -> normalised text embeddings), one per model, so repeated evaluations
    (every few training steps, every schedule of a sweep) reuse its compilation."""
    return jax.jit(lambda variables, tokens: model.apply(variables, tokens, method=model.encode_text,
                                                         normalize=True))


def run_image_program(program: Callable, variables, batches: Iterable[dict], *, extra_args=(),
                      description: str = "evaluating", keep_keys=("labels",)) -> tuple[dict, float]:
    """Runs jitted `program(variables, images, index, *extra_args) -> {name: [B, ...]}` over every batch.

    batches: the eval iterator's dicts of global arrays ('images', 'index', 'mask', and `keep_keys`); `index` is
    each row's example index in the split (-1 on padding), from which a program may derive per-example keys.
    Returns (results, seconds): results[name] are the rows of the real examples in dataset order, plus
    results['index']; seconds is the wall time of the loop after the first (compiling) step.
    Raises ValueError when an example shows up twice (the iterator or the sharding is broken).
    """
    from tqdm.auto import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None
    collected, start, steps = {}, None, 0
    for batch in tqdm(batches, total=total, desc=description, disable=not sharding.is_main_process()):
        outputs = dict(program(variables, batch["images"], batch["index"], *extra_args))
        for key in keep_keys:
            if key in batch:
                outputs[key] = batch[key]
        outputs["index"] = batch["index"]
        outputs["mask"] = batch["mask"]
        host = {name: sharding.to_host(value) for name, value in outputs.items()}  # waits for the step
        real = host.pop("mask").astype(bool) & (host["index"] >= 0)
        for name, value in host.items():
            collected.setdefault(name, []).append(value[real])
        steps += 1
        if start is None:
            start = time.perf_counter()  # after the first step: compilation is not throughput
    seconds = time.perf_counter() - start if start is not None else 0.0
    if not collected:
        raise ValueError("the eval iterator yielded no batches")
    results = {name: np.concatenate(parts) for name, parts in collected.items()}
    if not len(results["index"]):
        skipped = getattr(batches, "skipped", None)
        raise ValueError(f"no example of the split could be evaluated (every row was padding or unreadable"
                         f"{'; skipped: ' + str(skipped) if skipped else ''})")
    order = np.argsort(results["index"], kind="stable")
    results = {name: value[order] for name, value in results.items()}
    duplicates = results["index"][1:][np.diff(results["index"]) == 0]
    if duplicates.size:
        raise ValueError(f"examples {duplicates[:5].tolist()} were evaluated more than once; the eval iterator "
                         f"must give every example one unmasked row")
    results["_steps"] = steps
    return results, seconds


def examples_per_second(num_examples: int, steps: int, seconds: float) -> Optional[float]:
    """Throughput over the steps after the first, or None with too few steps to time."""
    if steps < 2 or seconds <= 0:
        return None
    return num_examples * (steps - 1) / steps / seconds


def top_k_classes(logits: jax.Array, k: int) -> jax.Array:
    return jax.lax.top_k(logits.astype(jnp.float32), k)[1].astype(jnp.int32)
