"""Batch-wise caption tokenization that also counts truncated captions."""
from typing import Callable, List, Optional, Tuple

import numpy as np

TokenizeFn = Callable[..., np.ndarray]  # (texts, context_length=...) -> int32 [N, context_length]


def resolve_tokenize(tokenize_fn: Optional[TokenizeFn]) -> TokenizeFn:
    if tokenize_fn is not None:
        return tokenize_fn
    from elip_jax.tokenizer import tokenize  # pylint: disable=g-import-not-at-top  # the project's one tokenizer
    return tokenize


def tokenize_captions(captions: List[str], context_length: int,
                      tokenize_fn: Optional[TokenizeFn] = None) -> Tuple[np.ndarray, int]:
    """(int32 [N, context_length], number of captions longer than the context).

    The tokenizer truncates long captions (keeping the end token last). One extra position reveals which
    captions did not fit; only those few are tokenized a second time at the real length.
    """
    tokenize = resolve_tokenize(tokenize_fn)
    longer = np.asarray(tokenize(captions, context_length=context_length + 1))
    tokens = longer[:, :context_length].astype(np.int32)
    truncated = np.flatnonzero(longer[:, context_length] != 0)
    if truncated.size:
        tokens[truncated] = np.asarray(tokenize([captions[i] for i in truncated], context_length=context_length))
    return tokens, int(truncated.size)
