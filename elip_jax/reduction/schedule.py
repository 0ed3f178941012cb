"""Token-reduction schedules: which method prunes, before which blocks, and how many patches it keeps.

Every count here is a Python int fixed when the model is built, so every shape is static and XLA compiles
one program per schedule. Counts are derived from the actual model (patch count, depth), never assumed.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Optional, Sequence

METHODS = ("none", "elip", "elip_inline", "evit", "random")
TEXT_GUIDED = ("elip", "elip_inline")

# ELIP's published schedule for 12-block towers: prune before blocks 2, 4 and 10.
DEFAULT_BEGIN_LAYERS_12 = (2, 4, 10)
DEFAULT_KEEP_RATIOS = (0.90, 0.65, 0.40)
# FLIP-style random masking keeps this fraction of the patches before block 0.
DEFAULT_RANDOM_KEEP_RATIO = 0.5
DEFAULT_MIX = 0.8  # lambda: weight of the image CLS when mixing in the text guide (docs/elip.md, step 2)


@dataclasses.dataclass(frozen=True)
class ReductionSchedule:
    """A validated schedule for one vision tower.

    begin_layers[s]: the block before which stage s prunes. keep[s]: patches kept there (CLS excluded).
    merge: whether the pruned tokens are fused into one extra token (ELIP/EViT) or dropped (random).
    A stage whose keep equals its candidate count keeps everything and is skipped (keep ratio 1.0).
    """

    method: str = "none"
    begin_layers: tuple = ()
    keep: tuple = ()
    num_patches: int = 0
    depth: int = 0
    merge: bool = True
    mix: float = DEFAULT_MIX

    @property
    def text_guided(self) -> bool:
        return self.method in TEXT_GUIDED

    @property
    def prunes(self) -> bool:
        return self.method != "none" and bool(self.begin_layers)

    def candidates(self, stage: int) -> int:
        """How many tokens (CLS excluded) stage `stage` chooses from."""
        if stage == 0:
            return self.num_patches
        previous = self.candidates(stage - 1)
        if self.keep[stage - 1] == previous:  # a skipped stage changes nothing
            return previous
        return self.keep[stage - 1] + int(self.merge)

    def stage_is_active(self, stage: int) -> bool:
        return self.keep[stage] < self.candidates(stage)

    def active_stages(self) -> list[int]:
        """The stages that prune when the method's condition holds (a guide, a key): keep < candidates."""
        if not self.prunes:
            return []
        return [s for s in range(len(self.keep)) if self.stage_is_active(s)]

    def group_end(self, stage: int) -> int:
        """The block after the last block of stage `stage`'s group (its look-ahead runs up to here)."""
        later = self.begin_layers[stage + 1:]
        return later[0] if later else self.depth

    def tokens_per_block(self) -> list[int]:
        """Tokens entering each block (CLS included) when the schedule prunes."""
        tokens, counts, stage = 1 + self.num_patches, [], 0
        for block in range(self.depth):
            while stage < len(self.begin_layers) and self.begin_layers[stage] == block:
                if stage in self.active_stages():
                    tokens = 1 + self.keep[stage] + int(self.merge)
                stage += 1
            counts.append(tokens)
        return counts


def default_begin_layers(depth: int) -> tuple:
    """ELIP's 2/4/10 scaled to the tower's depth: round(b * depth / 12) (24 blocks: 4, 8, 20).

    Towers shallower than 12 blocks could round two points onto one block: each point then moves to at
    least one block after the previous one (4 blocks: 1, 2, 3).
    """
    layers = []
    for b in DEFAULT_BEGIN_LAYERS_12:
        layer = max(int(math.floor(b * depth / 12 + 0.5)), 1)
        layers.append(max(layer, layers[-1] + 1) if layers else layer)
    return tuple(layers)


def keep_count(ratio: float, num_patches: int) -> int:
    """floor(ratio * num_patches) with the ratio read as written: 0.57 of 100 keeps 57, where the binary float
    product 0.57 * 100 = 56.99999999999999 would floor to 56."""
    return math.floor(Fraction(repr(float(ratio))) * num_patches)


def make_schedule(method: str, num_patches: int, depth: int,
                  begin_layers: Optional[Sequence[int]] = None,
                  keep_ratios: Optional[Sequence[float]] = None,
                  mix: float = DEFAULT_MIX) -> ReductionSchedule:
    """Builds and validates a schedule for a tower with `num_patches` patches and `depth` blocks.

    Keep counts are floor(ratio * num_patches): ratios are of the ORIGINAL patch count (docs/elip.md).
    Raises ValueError naming the bad value and the valid range.
    """
    if method not in METHODS:
        raise ValueError(f"reduction method must be one of {METHODS}, got {method!r}")
    if num_patches < 1 or depth < 1:
        raise ValueError(f"need num_patches >= 1 and depth >= 1, got {num_patches} and {depth}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"reduction mix (lambda) must be in [0, 1], got {mix}")
    if method == "none":
        return ReductionSchedule("none", (), (), num_patches, depth, True, mix)

    if method == "random":
        begin = tuple(begin_layers) if begin_layers is not None else (0,)
        ratios = tuple(keep_ratios) if keep_ratios is not None else (DEFAULT_RANDOM_KEEP_RATIO,)
        if begin != (0,) or len(ratios) != 1:
            raise ValueError(f"random masking keeps patches once, before block 0: begin_layers must be "
                             f"(0,) with one keep ratio, got begin_layers={begin}, keep_ratios={ratios}")
        merge, first_valid = False, 0
    else:
        begin = tuple(begin_layers) if begin_layers is not None else default_begin_layers(depth)
        ratios = tuple(keep_ratios) if keep_ratios is not None else DEFAULT_KEEP_RATIOS
        merge, first_valid = True, 1  # scores need a block before (evit) or a CLS to guide (elip)

    if len(begin) != len(ratios):
        raise ValueError(f"begin_layers {begin} and keep_ratios {ratios} must have the same length")
    for i, layer in enumerate(begin):
        if not isinstance(layer, int) or not first_valid <= layer <= depth - 1:
            raise ValueError(f"begin_layers[{i}] = {layer!r} is out of range: must be an int in "
                             f"[{first_valid}, {depth - 1}] for a {depth}-block tower with method {method!r}")
        if i and layer <= begin[i - 1]:
            raise ValueError(f"begin_layers must be strictly increasing, got {begin}")
    for i, ratio in enumerate(ratios):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"keep_ratios[{i}] = {ratio!r} is out of range: must be in (0, 1]")

    keep = tuple(keep_count(r, num_patches) for r in ratios)
    schedule = ReductionSchedule(method, begin, keep, num_patches, depth, merge, mix)
    for stage, k in enumerate(keep):
        available = schedule.candidates(stage)
        if not 1 <= k <= available:
            raise ValueError(
                f"stage {stage} (before block {begin[stage]}) keeps {k} patches "
                f"(floor({ratios[stage]} * {num_patches})) but selects from {available} candidates: "
                f"keep must be in [1, {available}] (equal keeps everything)")
    return schedule
