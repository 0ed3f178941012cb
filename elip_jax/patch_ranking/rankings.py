"""The golden rankings' folder: what `golden` writes, what the predictor's training reads.

    OUT/meta.json          {"format": "elip_jax-golden-rankings", "format_version": 1, "dataset", "split",
                            "data_dir", "num_examples" (of the split), "num_patches", "chunk_size", "settings"
                            (GoldenSettings: prune_layer, per_step, target, score, candidate, ...), "mode",
                            "pretrained", "image_size"}
    OUT/chunks/NNNNNNNNN.npy  int16 [n, P]: the rankings of split examples NNNNNNNNN .. NNNNNNNNN + n - 1, in split
                            order (the TFDS split's example index is the key); a row of -1: the image could not be
                            read (skipped, counted by the command)

Every file is written atomically (elip_jax.fileio), meta.json first: a run killed at any point leaves only whole
chunks, and a rerun with the same settings computes the missing ones (a rerun with other settings is refused).
"""
from __future__ import annotations

import io
import json
import os
from typing import Optional

import numpy as np

from elip_jax.fileio import atomic_write_bytes, atomic_write_json

FORMAT = "elip_jax-golden-rankings"
FORMAT_VERSION = 1
META = "meta.json"
CHUNKS = "chunks"
# what a rerun must agree on to continue a folder
IDENTITY = ("format", "format_version", "dataset", "split", "num_examples", "num_patches", "chunk_size",
            "settings", "pretrained", "image_size")


def chunk_path(folder: str, start: int) -> str:
    return os.path.join(folder, CHUNKS, f"{start:09d}.npy")


def read_meta(folder: str) -> dict:
    path = os.path.join(folder, META)
    if not os.path.isfile(path):
        raise ValueError(f"{folder!r} holds no golden rankings (no {META}; write them with "
                         "python -m elip_jax.patch_ranking golden)")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} is not a golden-rankings folder this elip_jax reads (format "
                         f"{meta.get('format')!r} version {meta.get('format_version')!r})")
    return meta


def start_folder(folder: str, meta: dict) -> list[int]:
    """Creates the folder (writing meta.json) or checks that it continues the same search; returns the starts of
    the chunks already written. ValueError naming the differing fields otherwise."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    if os.path.exists(os.path.join(folder, META)):
        before = read_meta(folder)
        recorded, new = json.loads(json.dumps(before)), json.loads(json.dumps(meta))
        differing = [f"{key} (was {recorded.get(key)!r}, now {new.get(key)!r})" for key in IDENTITY
                     if recorded.get(key) != new.get(key)]
        if differing:
            raise ValueError(f"--output {folder!r} holds golden rankings of another search: "
                             f"{'; '.join(differing)}; choose another --output or remove it")
    elif os.path.exists(folder) and os.listdir(folder):
        raise ValueError(f"--output {folder!r} exists and is not a golden-rankings folder; choose another")
    else:
        atomic_write_json(os.path.join(folder, META), meta)
    return written_chunks(folder)


def written_chunks(folder: str) -> list[int]:
    directory = os.path.join(folder, CHUNKS)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name[:-4]) for name in os.listdir(directory) if name.endswith(".npy") and name[:-4].isdigit())


def write_chunk(folder: str, start: int, rankings: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rankings, np.int16))
    atomic_write_bytes(chunk_path(folder, start), buffer.getvalue())


class RankingsReader:
    """A golden-rankings folder, read: `meta`, `rankings` int32 [N, P] in split order (-1 rows: not computed yet or
    skipped), `available` bool [N] (rows that hold a ranking)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.meta = read_meta(folder)
        n, p = int(self.meta["num_examples"]), int(self.meta["num_patches"])
        self.rankings = np.full((n, p), -1, np.int32)
        for start in written_chunks(folder):
            chunk = np.load(chunk_path(folder, start))
            self.rankings[start:start + len(chunk)] = chunk
        self.available = self.rankings[:, 0] >= 0

    @property
    def num_examples(self) -> int:
        return len(self.rankings)

    @property
    def complete(self) -> bool:
        """Every chunk written (skipped images aside)."""
        chunk = int(self.meta["chunk_size"])
        return len(written_chunks(self.folder)) == -(-self.num_examples // chunk)

    @property
    def removed(self) -> int:
        """Patches the golden search removed (the ranking's first `removed` entries): the target, rounded up to
        whole candidates (2x2 blocks remove 4 at a time)."""
        settings = self.meta["settings"]
        size = int(settings["candidate"]) ** 2
        return -(-int(settings["target"]) // size) * size

    def removed_mask(self, indices: Optional[np.ndarray] = None, count: Optional[int] = None) -> np.ndarray:
        """bool [n, P]: True for the golden-removed patches (the first `count`, default the search's target)."""
        rows = self.rankings if indices is None else self.rankings[np.asarray(indices)]
        count = self.removed if count is None else count
        mask = np.zeros(rows.shape, bool)
        np.put_along_axis(mask, rows[:, :count].clip(0), True, axis=1)
        return mask


def read_rankings(folder: str) -> RankingsReader:
    """The rankings of a folder written by `golden` (see this module's docstring for the format)."""
    return RankingsReader(folder)
