"""Few-shot sets: K labelled images per class from a TFDS split, the same K for the same seed.

Labels are read first (images left encoded), the shots chosen per class with a seeded permutation, and only the
chosen images are decoded, resized and centre-cropped as evaluation does (elip_jax.data.eval_pipeline).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def select_shots(classes: np.ndarray, shots: int, num_classes: int, seed: int) -> np.ndarray:
    """Split indices of `shots` examples of every class 0..num_classes-1, class-major, each class's in split
    order. classes[i]: example i's class (-1: in no class, never chosen). Raises ValueError naming the first
    class with fewer than `shots` examples."""
    classes = np.asarray(classes)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(classes == c)
        if len(members) < shots:
            raise ValueError(f"class {c} has {len(members)} example(s) in the split, fewer than --shots {shots}")
        chosen.append(np.sort(rng.permutation(members)[:shots]))
    return np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)


def read_classes(source, label_key: str, label_to_class: Optional[np.ndarray]) -> np.ndarray:
    """Every example's class row (label_to_class applied; -1 where a label has no class)."""
    labels = np.array([int(np.asarray(source[i][label_key])) for i in range(len(source))], np.int64)
    if label_to_class is None:
        return labels
    table = np.asarray(label_to_class)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f"labels must be in [0, {len(table)}); got values in [{labels.min()}, {labels.max()}]")
    return table[labels]


def load_shots(dataset: str, split: str, *, data_dir: Optional[str], shots: int, num_classes: int, seed: int,
               image_size: int, image_key: str = "image", label_key: str = "label",
               label_to_class: Optional[np.ndarray] = None) -> dict:
    """{'images': uint8 [N, S, S, 3], 'classes': int32 [N], 'index': int64 [N]}: N = shots * num_classes."""
    from elip_jax import data
    from elip_jax.data.eval_pipeline import PrepareEvalExample

    source = data.open_source(dataset, split, data_dir)
    classes = read_classes(source, label_key, label_to_class)
    index = select_shots(classes, shots, num_classes, seed)
    prepare = PrepareEvalExample(image_key, label_key, image_size)
    rows = [prepare(int(i), source[int(i)]) for i in index]
    unreadable = [int(i) for i, row in zip(index, rows) if not row["mask"]]
    if unreadable:
        raise ValueError(f"shot example(s) {unreadable[:5]} of {dataset}/{split} cannot be decoded")
    return {"images": np.stack([row["images"] for row in rows]), "classes": classes[index].astype(np.int32),
            "index": index}
