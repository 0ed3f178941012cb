"""Zero-shot classifier weights: one text embedding per class, from prompt templates (OpenAI's recipe).

Each class embedding is the L2-normalised mean of the L2-normalised embeddings of that class's prompts.
All prompts are tokenized in one call and encoded in large sharded batches; the result depends on the text
tower only, so a reduction sweep over the image tower builds it once.
"""
from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from elip_jax.evaluate.classnames import ZeroShotPrompts
from elip_jax.evaluate.extract import text_embeddings


def class_embeddings_from_prompts(prompt_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
    """[C * T, E] normalised prompt embeddings (class-major) -> [C, E] normalised class embeddings."""
    prompt_embeddings = np.asarray(prompt_embeddings, np.float32)
    if prompt_embeddings.ndim != 2 or len(prompt_embeddings) % num_classes:
        raise ValueError(f"expected [classes * templates, E] prompt embeddings for {num_classes} classes; got "
                         f"shape {prompt_embeddings.shape}")
    per_class = prompt_embeddings.reshape(num_classes, -1, prompt_embeddings.shape[-1]).mean(axis=1)
    return per_class / np.linalg.norm(per_class, axis=-1, keepdims=True)


def zeroshot_classifier(model, variables, prompts: ZeroShotPrompts, mesh: Mesh, batch_size: int = 1024,
                        context_length: int | None = None) -> np.ndarray:
    """Class embeddings [C, E] (host, fp32, rows L2-normalised) for `prompts`, on every process."""
    from elip_jax.tokenizer import tokenize

    context_length = context_length or model.config.context_length
    tokens = tokenize(prompts.prompts(), context_length=context_length)
    embeddings = text_embeddings(model, variables, tokens, mesh, batch_size=batch_size)
    return class_embeddings_from_prompts(embeddings, prompts.num_classes)
