"""Zero-shot metrics with CLIP_benchmark's definitions, in NumPy on the host.

Classification (CLIP_benchmark `zeroshot_classification`): `acc1`, `acc5` (top-k accuracy over all
examples; None when there are fewer than 5 classes, where CLIP_benchmark reports NaN) and
`mean_per_class_recall` (scikit-learn's balanced accuracy: the mean over classes that occur in the labels of
the fraction of their examples predicted correctly).

Retrieval (CLIP_benchmark `zeroshot_retrieval`): `image_retrieval_recall@k` is, over TEXT queries, the
fraction whose paired image is among the k images scoring highest; `text_retrieval_recall@k` is, over IMAGE
queries, the fraction with at least one of their captions among the k texts scoring highest. Ranks count the
candidates that score strictly higher, so exact ties are resolved in the query's favour (torch.topk, used by
CLIP_benchmark, breaks them arbitrarily).
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

    image_ranks = np.empty(len(texts), np.int64)  # per text: images scoring above its own image
    for start in range(0, len(texts), chunk):
        scores = texts[start:start + chunk] @ images.T
        own = scores[np.arange(len(scores)), text_to_image[start:start + chunk]]
        image_ranks[start:start + chunk] = (scores > own[:, None]).sum(axis=1)

    text_ranks = np.full(len(images), np.iinfo(np.int64).max)  # per image: texts above its best caption
    for start in range(0, len(images), chunk):
        scores = images[start:start + chunk] @ texts.T
        positive = text_to_image[None, :] == np.arange(start, start + len(scores))[:, None]
        best = np.where(positive, scores, -np.inf).max(axis=1)
        has_caption = positive.any(axis=1)
        text_ranks[start:start + chunk] = np.where(has_caption, (scores > best[:, None]).sum(axis=1),
                                                   np.iinfo(np.int64).max)

    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((image_ranks < k).mean())
        metrics[f"text_retrieval_recall@{k}"] = float((text_ranks < k).mean())
    return metrics
