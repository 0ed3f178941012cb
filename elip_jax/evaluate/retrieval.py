"""Zero-shot image-text retrieval of a whole split (several captions per image, as COCO)."""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from elip_jax.evaluate import sharding
from elip_jax.evaluate.extract import encode_image_program, examples_per_second, run_image_program, text_embeddings
from elip_jax.evaluate.metrics import DEFAULT_RECALL_KS, retrieval_metrics


@functools.lru_cache(maxsize=16)
def embed_program(model, seed: int = 0):
    encode = encode_image_program(model, seed)
    return jax.jit(lambda variables, images, index: {"embeddings": encode(variables, images, index)})


def image_embeddings(model, variables, batches: Iterable[dict], mesh: Mesh, description: str = "retrieval",
                     seed: int = 0):
    """(dataset indices [N], normalised image embeddings [N, E], examples per second) on every process; seed: of
    the per-example keys of a method that draws at evaluation (random)."""
    results, seconds = run_image_program(embed_program(model, seed), sharding.replicate(variables, mesh), batches,
                                         description=description, keep_keys=())
    count = len(results["index"])
    return results["index"], results["embeddings"], examples_per_second(count, results["_steps"], seconds)


def flatten_captions(indices: np.ndarray, captions: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Texts of the evaluated images, and text_to_image[t] = row (in `indices`) of text t's image."""
    texts, owner = [], []
    for row, index in enumerate(np.asarray(indices)):
        if not 0 <= index < len(captions):
            raise ValueError(f"example index {index} has no captions (captions were read for {len(captions)} "
                             f"examples)")
        for caption in captions[index]:
            texts.append(caption)
            owner.append(row)
    if not texts:
        raise ValueError("no captions: retrieval needs at least one caption per image")
    return texts, np.asarray(owner, np.int64)


def evaluate_retrieval(model, variables, batches: Iterable[dict], captions: Sequence[Sequence[str]], mesh: Mesh,
                       ks: Sequence[int] = DEFAULT_RECALL_KS, text_batch_size: int = 1024,
                       description: str = "retrieval", seed: int = 0) -> dict:
    """CLIP_benchmark's recall@k both ways. captions[i]: the captions of dataset example i (its 'index').
    seed: of the per-example keys of a method that draws at evaluation (random)."""
    from elip_jax.tokenizer import tokenize

    indices, images, speed = image_embeddings(model, variables, batches, mesh, description, seed)
    texts, text_to_image = flatten_captions(indices, captions)
    tokens = tokenize(texts, context_length=model.config.context_length)
    texts_embedded = text_embeddings(model, variables, tokens, mesh, batch_size=text_batch_size)
    metrics = retrieval_metrics(images, texts_embedded, text_to_image, ks)
    return {**metrics, "num_examples": int(len(indices)), "num_texts": len(texts), "examples_per_second": speed}
