"""Zero-shot metrics with CLIP_benchmark's definitions, in NumPy on the host.

Classification (CLIP_benchmark `zeroshot_classification`): `acc1`, `acc5` (top-k accuracy over all
examples; None when there are fewer than 5 classes, where CLIP_benchmark reports NaN) and
`mean_per_class_recall` (scikit-learn's balanced accuracy: the mean over classes that occur in the labels of
the fraction of their examples predicted correctly).

Retrieval (CLIP_benchmark `zeroshot_retrieval`): `image_retrieval_recall@k` is, over TEXT queries, the
fraction whose paired image is among the k images scoring highest; `text_retrieval_recall@k` is, over IMAGE
queries, the fraction with at least one of their captions among the k texts scoring highest.

Exact ties are common, not a corner case: a collapsed image tower scores every image the same, and in the
built-in test split most captions also belong to another image, so identical texts tie exactly. Candidates are
ordered by score, then by lower index, which is the set `torch.topk` selects in CLIP_benchmark on CPU whenever
it takes its partial-sort path (64 * k <= candidates; below that its choice among ties is unspecified). A
query's rank is therefore the number of candidates scoring higher plus the tied ones with a lower index;
counting only the higher ones would give a collapsed image tower an image R@1 of 1.0 instead of 1/N.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

DEFAULT_RECALL_KS = (1, 5, 10)


def classification_metrics(top_classes: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top_classes [N, k]: predicted class rows, best first (k >= min(5, num_classes)); labels [N] rows."""
    top_classes, labels = np.asarray(top_classes), np.asarray(labels)
    if top_classes.ndim != 2 or labels.shape != top_classes.shape[:1] or not len(labels):
        raise ValueError(f"need top_classes [N, k] and labels [N] with N >= 1; got {top_classes.shape} and "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be classifier rows in [0, {num_classes}); got values in "
                         f"[{labels.min()}, {labels.max()}] (a TFDS label with no class in the classifier?)")
    hits = top_classes == labels[:, None]
    acc5: Optional[float] = None
    if num_classes >= 5:
        if top_classes.shape[1] < 5:
            raise ValueError(f"acc5 needs the top-5 classes; got only {top_classes.shape[1]} per example")
        acc5 = float(hits[:, :5].any(axis=1).mean())
    return {"acc1": float(hits[:, 0].mean()), "acc5": acc5,
            "mean_per_class_recall": mean_per_class_recall(top_classes[:, 0], labels)}


def mean_per_class_recall(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of the recall of that class (balanced accuracy)."""
    classes, inverse = np.unique(labels, return_inverse=True)
    correct = np.bincount(inverse, weights=(predictions == labels).astype(np.float64), minlength=len(classes))
    counts = np.bincount(inverse, minlength=len(classes))
    return float(np.mean(correct / counts))


def retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray, text_to_image: np.ndarray,
                      ks: Sequence[int] = DEFAULT_RECALL_KS, chunk: int = 1024) -> dict:
    """Recall@k both ways from L2-normalised embeddings; text_to_image[t] = row of text t's image.

    Works in chunks of queries, so the full [texts, images] score matrix never has to fit in memory.
    An image with no caption counts as a miss in text retrieval, as in CLIP_benchmark.
    """
    images = np.asarray(image_embeddings, np.float32)
    texts = np.asarray(text_embeddings, np.float32)
    text_to_image = np.asarray(text_to_image, np.int64)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"need image [N, E] and text [M, E] embeddings; got {images.shape} and {texts.shape}")
    if text_to_image.shape != (len(texts),) or not len(texts):
        raise ValueError(f"text_to_image must give one image row per text ({len(texts)}); got shape "
                         f"{text_to_image.shape}")
    if text_to_image.min() < 0 or text_to_image.max() >= len(images):
        raise ValueError(f"text_to_image values must be image rows in [0, {len(images)})")

    image_ranks = np.empty(len(texts), np.int64)  # per text: images ordered before its own image
    for start in range(0, len(texts), chunk):
        scores = texts[start:start + chunk] @ images.T
        own_index = text_to_image[start:start + chunk]
        image_ranks[start:start + chunk] = ranks(scores, own_index)

    text_ranks = np.full(len(images), np.iinfo(np.int64).max)  # per image: texts ordered before its first caption
    for start in range(0, len(images), chunk):
        scores = images[start:start + chunk] @ texts.T
        positive = text_to_image[None, :] == np.arange(start, start + len(scores))[:, None]
        best = np.where(positive, scores, -np.inf)
        # the caption that comes first in (score descending, index ascending): argmax takes the lowest index
        first = best.argmax(axis=1)
        has_caption = positive.any(axis=1)
        text_ranks[start:start + chunk] = np.where(has_caption, ranks(scores, first), np.iinfo(np.int64).max)

    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((image_ranks < k).mean())
        metrics[f"text_retrieval_recall@{k}"] = float((text_ranks < k).mean())
    return metrics


def ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row of scores [Q, C]: the 0-based position of candidate targets[q] when the candidates are ordered
    by score (highest first), ties by lower index first."""
    own = scores[np.arange(len(scores)), targets][:, None]
    lower = np.arange(scores.shape[1])[None, :] < targets[:, None]
    return ((scores > own) | ((scores == own) & lower)).sum(axis=1)
