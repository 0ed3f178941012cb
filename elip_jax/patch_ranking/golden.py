"""Golden rankings (docs/patch_ranking.md#golden-rankings): for each image, which patches can go at the prune
layer, found greedily.

Before block `prune_layer` every remaining candidate (one patch, or a 2x2 block of patches) is tried: the image's
final embedding is computed without the patches removed so far and without that candidate, and scored (cosine
similarity to the unpruned embedding, or the zero-shot probability of the true class, or the highest class
probability: higher = safer to remove). The `per_step` best-scoring candidates go, the rest are scored again, until
`target` patches are gone. The removal order is the ranking.

Static shapes everywhere:
  * the blocks before the prune layer run once per image (`prefix`), never per candidate;
  * all candidates of a step run as one batched computation (`lax.map` over chunks of `candidate_batch`);
  * MASKING: removed patches stay in the sequence but never act as keys or values (a -inf logit bias on their
    keys), which gives the CLS output of dropping them exactly (they still update themselves, but nothing reads
    them), at one shape for every step: one compiled program;
  * GATHERING (the default: measured faster, BENCHMARKS.md "Patch Ranking"): the remaining patches are gathered
    into a shorter sequence: fewer FLOPs, one program per step (compiled once per search, reused for every batch).
  * images are sharded over all devices (a 'data' mesh); choices are per image, so nothing moves between devices.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elip_jax.reduction.ops import rank_candidates

SCORES = ("similarity", "label", "max")
MASKING, GATHERING = "masking", "gathering"
MODES = (MASKING, GATHERING)
DEFAULT_MODE = GATHERING  # measured faster (time 0.72 of masking, tiny-12 on CPU): BENCHMARKS.md, "Patch Ranking"
# The published search removes 10 of ViT-B/16's 196 patches per step (about 5 % of the image). Steps that large on
# a smaller grid remove candidates whose single-candidate scores no longer add up: on 64 patches, 10 per step left
# some images' embeddings at cosine 0.4-0.6 to the unpruned one (3 per step: above 0.99 on the same images;
# BENCHMARKS.md "Patch Ranking"). So the default keeps the published fraction of the candidates per step.
PUBLISHED_PER_STEP, PUBLISHED_CANDIDATES = 10, 196
DEFAULT_CANDIDATE_BATCH = 64
REMOVED_BIAS = float(np.finfo(np.float32).min)  # exp(min - max) underflows to exactly 0: the key is never read


@dataclasses.dataclass(frozen=True)
class GoldenSettings:
    """A validated golden search for one tower. target counts patches; per_step counts candidates."""

    num_patches: int
    depth: int
    prune_layer: int
    per_step: int
    target: int
    score: str = "similarity"
    candidate: int = 1

    @property
    def grid(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def candidate_size(self) -> int:
        """Patches in one candidate: 1, or 4 for 2x2 blocks."""
        return self.candidate ** 2

    @property
    def num_candidates(self) -> int:
        return self.num_patches // self.candidate_size

    @property
    def removed_candidates(self) -> int:
        """Candidates removed in all: enough to remove `target` patches."""
        return -(-self.target // self.candidate_size)

    def removal_counts(self) -> list[int]:
        """Candidates removed at each step: per_step, ..., then what is left of the target."""
        counts, left = [], self.removed_candidates
        while left > 0:
            counts.append(min(self.per_step, left))
            left -= counts[-1]
        return counts

    def candidate_forwards(self) -> int:
        """Forward passes (from the prune layer on) per image: every candidate at every step (static shapes)."""
        return self.num_candidates * len(self.removal_counts())

    def groups(self) -> np.ndarray:
        """[C, size] the patch indices (row-major, 0-based) of each candidate, each row in row-major order."""
        if self.candidate == 1:
            return np.arange(self.num_patches, dtype=np.int32)[:, None]
        g, rows = self.grid, []
        for by in range(g // 2):
            for bx in range(g // 2):
                top = 2 * by * g + 2 * bx
                rows.append([top, top + 1, top + g, top + g + 1])
        return np.asarray(rows, np.int32)

    def member_mask(self) -> np.ndarray:
        """[C, P] bool: candidate c holds patch p."""
        mask = np.zeros((self.num_candidates, self.num_patches), bool)
        for c, members in enumerate(self.groups()):
            mask[c, members] = True
        return mask

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_per_step(num_candidates: int) -> int:
    """Candidates removed per greedy step by default: the published 10 of 196, scaled to `num_candidates`
    (10 for ViT-B/16's patches, 3 for 64 patches, 2 for 49), at least 1."""
    return max(1, round(PUBLISHED_PER_STEP * num_candidates / PUBLISHED_CANDIDATES))


def make_settings(config, *, prune_layer: Optional[int] = None, per_step: Optional[int] = None,
                  target: Optional[int] = None, score: str = "similarity", candidate: int = 1) -> GoldenSettings:
    """The search for a model config, defaults filled in (layer 3 of 12 scaled to the depth, 10 of 196 candidates
    per step scaled to the candidates, 40 % of the patches); ValueError naming the value and its valid range."""
    from elip_jax.reduction.patch_ranking import default_prune_layer, default_remove_count
    p, depth = config.num_patches, config.vision_layers
    prune_layer = default_prune_layer(depth) if prune_layer is None else prune_layer
    per_step = default_per_step(p // candidate ** 2) if per_step is None else per_step
    target = default_remove_count(p) if target is None else target
    if isinstance(prune_layer, bool) or not isinstance(prune_layer, int) or not 0 <= prune_layer < depth:
        raise ValueError(f"prune layer must be an int in [0, {depth - 1}] for a {depth}-block tower; got "
                         f"{prune_layer!r}")
    if isinstance(per_step, bool) or not isinstance(per_step, int) or per_step < 1:
        raise ValueError(f"per step (candidates removed per greedy step) must be an int >= 1; got {per_step!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    if candidate not in (1, 2):
        raise ValueError(f"candidate must be 1 (single patches) or 2 (2x2 blocks); got {candidate!r}")
    if candidate == 2 and (math.isqrt(p) ** 2 != p or math.isqrt(p) % 2):
        raise ValueError(f"2x2 candidates need a square patch grid of even side; this tower has {p} patches")
    size = candidate ** 2
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= p - size:
        raise ValueError(f"target (patches removed) must be an int in [1, {p - size}] (at least one candidate "
                         f"stays) for {p} patches; got {target!r}")
    return GoldenSettings(p, depth, prune_layer, per_step, target, score, candidate)


# ------------------------------------------------------------------------ forward passes (model.apply methods)

def _enter(visual, x, i: int):
    """The tokens entering block i (VPT-deep towers swap their learnable tail there; others change nothing)."""
    enter = getattr(visual, "enter_block", None)
    return x if enter is None else enter(x, i)


def prefix_tokens(module, images, prune_layer: int):
    """CLIP.apply method: the tokens entering block `prune_layer` [B, T, D] (embedding and earlier blocks)."""
    visual = module.visual
    x = visual.embed(images)
    for i in range(prune_layer):
        x = visual.blocks[i](_enter(visual, x, i))
    return x


def suffix_features(module, x, key_bias, prune_layer: int):
    """CLIP.apply method: image features [N, E] (not normalised) from the tokens x [N, T, D] entering block
    `prune_layer`; key_bias [N, T] (or None) is added to every attention logit of each key in every later block."""
    visual = module.visual
    for i in range(prune_layer, len(visual.blocks)):
        x, _ = visual.blocks[i].attend(_enter(visual, x, i), key_bias=key_bias)
        x = visual.blocks[i].feed_forward(x)
    return visual.ln_post(x[:, 0]).astype(jnp.float32) @ visual.proj


def _normalize(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def score_features(features, reference, score: str, labels=None, class_embeddings=None, logit_scale=None):
    """Higher = safer to remove. features [N, E]; reference [N, E] normalised unpruned embeddings.

    'similarity' is cos(f, e) - 1, computed as -|f - e|^2 / 2 (equal for unit vectors): removing one patch moves
    the embedding very little, so the cosines of most candidates lie within a few float32 steps of 1 (6e-8 apart)
    and would tie or be ordered by rounding; the distance keeps float32's relative precision on the small change.
    """
    features = _normalize(features.astype(jnp.float32))
    if score == "similarity":
        return -0.5 * jnp.sum(jnp.square(features - reference), axis=-1)
    probabilities = jax.nn.softmax(logit_scale * features @ class_embeddings.T, axis=-1)
    if score == "max":
        return probabilities.max(axis=-1)
    return jnp.take_along_axis(probabilities, labels[:, None], axis=1)[:, 0]


# ------------------------------------------------------------------------------------------- one greedy step

def _bias_for(removed_patches, protected: int):
    """Key bias [N, T] from removed patches [N, P]: 0 for CLS, the kept patches and the protected tail."""
    n = removed_patches.shape[0]
    bias = jnp.where(removed_patches, REMOVED_BIAS, 0.0).astype(jnp.float32)
    return jnp.concatenate([jnp.zeros((n, 1), jnp.float32), bias, jnp.zeros((n, protected), jnp.float32)], axis=1)


def _gather_remaining(x, drop, keep: int, protected: int):
    """[CLS, the first `keep` patches with drop False (original order), protected] from x [N, T, D], drop [N, P]."""
    order = jnp.argsort(drop, axis=-1, stable=True)[:, :keep]  # kept patches first, in order
    patches = jnp.take_along_axis(x[:, 1:1 + drop.shape[1]], order[..., None], axis=1)
    parts = [x[:, :1], patches] + ([x[:, x.shape[1] - protected:]] if protected else [])
    return jnp.concatenate(parts, axis=1)


def step_scores(model, params, x0, removed, reference, labels, class_embeddings, *, settings: GoldenSettings,
                mode: str, removed_count: int, candidate_batch: int, protected: int):
    """Scores [B, C] of removing each candidate next (removed candidates: -inf), and the candidates ranked
    from the highest score down [B, C] (ties to the lower index). removed: [B, C] bool."""
    members = jnp.asarray(settings.member_mask())  # [C, P]
    removed_patches = (removed.astype(jnp.int32) @ members.astype(jnp.int32)) > 0  # [B, P]
    logit_scale = jnp.minimum(jnp.exp(params["params"]["logit_scale"]), 100.0)
    keep = settings.num_patches - settings.candidate_size * (removed_count + 1)

    def candidate_scores(member_row):  # one candidate for every image: [B]
        drop = removed_patches | member_row[None]
        if mode == MASKING:
            features = model.apply(params, x0, _bias_for(drop, protected), settings.prune_layer,
                                   method=suffix_features)
        else:  # an already-removed candidate drops fewer patches: its sequence is cut to `keep`; scored -inf anyway
            x = _gather_remaining(x0, drop, keep, protected)
            features = model.apply(params, x, None, settings.prune_layer, method=suffix_features)
        return score_features(features, reference, settings.score, labels, class_embeddings, logit_scale)

    scores = jax.lax.map(candidate_scores, members, batch_size=min(candidate_batch, settings.num_candidates)).T
    scores = jnp.where(removed, -jnp.inf, scores)
    return scores, rank_candidates(scores).astype(jnp.int32)


def reference_and_prefix(model, params, images, prune_layer: int):
    x0 = model.apply(params, images, prune_layer, method=prefix_tokens)
    reference = _normalize(model.apply(params, x0, None, prune_layer, method=suffix_features))
    return x0, reference


class GoldenSearch:
    """Compiled golden search for one model, settings and per-call batch size: `__call__(images) -> [B, P]`.

    Programs are compiled on first use and reused for every batch of the same size (one for the prefix, one step
    program with masking, one per step with gathering). The batch is sharded over `mesh`'s 'data' axis.
    """

    def __init__(self, model, variables, settings: GoldenSettings, *, mode: str = DEFAULT_MODE,
                 candidate_batch: int = DEFAULT_CANDIDATE_BATCH, class_embeddings=None, mesh: Optional[Mesh] = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if settings.score != "similarity" and class_embeddings is None:
            raise ValueError(f"score {settings.score!r} needs class_embeddings (normalised text embeddings [K, E])")
        self.model, self.settings, self.mode = model, settings, mode
        self.protected = model.reduction.protected
        self.mesh = mesh or Mesh(np.asarray(jax.devices()), ("data",))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.variables = jax.device_put(variables, self.replicated)
        self.class_embeddings = None if class_embeddings is None else jax.device_put(
            _normalize(jnp.asarray(class_embeddings, jnp.float32)), self.replicated)
        self._prefix = jax.jit(functools.partial(reference_and_prefix, model, prune_layer=settings.prune_layer),
                               out_shardings=(self.batch_sharding, self.batch_sharding))
        self._steps = {}
        self.candidate_batch = candidate_batch

    @property
    def devices(self) -> int:
        return self.mesh.size

    def _step(self, removed_count: int):
        key = removed_count if self.mode == GATHERING else 0  # masking: one shape, one program
        if key not in self._steps:
            fn = functools.partial(step_scores, self.model, settings=self.settings, mode=self.mode,
                                   removed_count=removed_count, candidate_batch=self.candidate_batch,
                                   protected=self.protected)
            self._steps[key] = jax.jit(fn, out_shardings=(self.replicated, self.replicated))
        return self._steps[key]

    def put(self, array):
        """A host array [B, ...] (the same on every process) as a global array sharded over the batch."""
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, self.batch_sharding, lambda index: array[index])

    def __call__(self, images, labels=None) -> np.ndarray:
        s = self.settings
        batch = images.shape[0]
        pad = -batch % self.devices
        if pad:  # every device gets the same number of images; the padding's rankings are dropped
            images = np.concatenate([np.asarray(images), np.zeros((pad,) + images.shape[1:], images.dtype)])
        labels = np.zeros(batch + pad, np.int32) if labels is None else np.concatenate(
            [np.asarray(labels, np.int32), np.zeros(pad, np.int32)])
        images, labels = self.put(images), self.put(labels)
        x0, reference = self._prefix(self.variables, images)
        removed = np.zeros((batch + pad, s.num_candidates), bool)
        order, taken, done = None, [], 0
        for count in s.removal_counts():
            _, order = self._step(done)(self.variables, x0, self.put(removed), reference, labels,
                                        self.class_embeddings)
            order = np.asarray(jax.device_get(order))
            chosen = order[:, :count]
            removed[np.arange(removed.shape[0])[:, None], chosen] = True
            taken.append(chosen)
            done += count
        # never removed: by the last step's scores, highest (least important) first; removed ones rank last there
        remaining = order[:, count:s.num_candidates - (done - count)]
        ranked = np.concatenate(taken + [remaining], axis=1)[:batch]  # [B, C]
        return s.groups()[ranked].reshape(batch, s.num_patches)


def golden_ranking(model, variables, images, *, prune_layer: Optional[int] = None, per_step: Optional[int] = None,
                   target: Optional[int] = None, score: str = "similarity", candidate: int = 1, labels=None,
                   class_embeddings=None, mode: str = DEFAULT_MODE,
                   candidate_batch: int = DEFAULT_CANDIDATE_BATCH) -> np.ndarray:
    """Golden rankings of `images` [B, H, W, 3] (float, CLIP-normalised) under `model` (its blocks and weights,
    whatever its reduction schedule: the search runs the blocks itself, unpruned except for what it removes).

    Returns int32 [B, P]: row b lists image b's patch indices (row-major, 0-based) in removal order, removed first
    (within one step by score, highest first); the patches never removed follow, least important first (highest
    score at the last step). prune_layer/per_step/target: defaults block 3 of 12 scaled to the depth, 10 candidates
    per step for 196 scaled to the number of candidates (`default_per_step`), 40 % of the patches.
    score: 'similarity' (to the unpruned embedding), 'label' (zero-shot probability of `labels` [B])
    or 'max' (highest class probability); the last two need class_embeddings [K, E] (text embeddings).
    candidate: 1 (patches) or 2 (2x2 blocks). mode: MASKING or GATHERING (the same rankings up to float rounding).
    """
    settings = make_settings(model.config, prune_layer=prune_layer, per_step=per_step, target=target, score=score,
                             candidate=candidate)
    if score == "label" and labels is None:
        raise ValueError("score 'label' needs the images' labels")
    search = GoldenSearch(model, variables, settings, mode=mode, candidate_batch=candidate_batch,
                          class_embeddings=class_embeddings)
    return search(np.asarray(images, np.float32), labels).astype(np.int32)
