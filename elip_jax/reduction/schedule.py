"""Token-reduction schedules: which method reduces, where, and how many tokens it keeps or merges.

Every count here is a Python int fixed when the model is built, so every shape is static and XLA compiles
one program per schedule. Counts are derived from the actual model (patch count, depth), never assumed.

Layout of the tokens: [CLS, candidates, protected]. CLS is never pruned or merged; `protected` trailing tokens
(learnable tokens, appended after the patches) are never pruned or merged either. The candidates are what a
method chooses among: the patches at first; after a stage that merges, the kept tokens then the stage's merged
token, which therefore sits last among the candidates, just before the protected tokens.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Optional, Sequence

from elip_jax.reduction.registry import BETWEEN_BLOCKS, INSIDE_BLOCKS, MERGE_ONE, get_method

# ELIP's published schedule for 12-block towers: prune before blocks 2, 4 and 10.
DEFAULT_BEGIN_LAYERS_12 = (2, 4, 10)
DEFAULT_KEEP_RATIOS = (0.90, 0.65, 0.40)
# FLIP-style random masking keeps this fraction of the patches, by default before block 0.
DEFAULT_RANDOM_KEEP_RATIO = 0.5
DEFAULT_MIX = 0.8  # lambda: weight of the image CLS when mixing in the text guide (docs/elip.md, step 2)


@dataclasses.dataclass(frozen=True)
class ReductionSchedule:
    """A validated schedule for one vision tower.

    Between-block methods: begin_layers[s] is the block before which stage s prunes, keep[s] the candidates it
    keeps. merge: whether the pruned tokens are fused into one extra token (ELIP/EViT) or dropped (random).
    A stage whose keep equals its candidate count keeps everything and is skipped (keep ratio 1.0).
    Inside-block methods (ToMe): r[i] tokens merged in block i (already clamped), begin_layers and keep empty.
    protected: learnable tokens after the patches, never pruned or merged (the tower owns them as parameters).
    """

    method: str = "none"
    begin_layers: tuple = ()
    keep: tuple = ()
    num_patches: int = 0
    depth: int = 0
    merge: bool = True
    mix: float = DEFAULT_MIX
    protected: int = 0
    r: tuple = ()

    @property
    def spec(self):
        """The registered `ReductionMethod` of this schedule."""
        return get_method(self.method)

    @property
    def text_guided(self) -> bool:
        return self.spec.text_guided

    @property
    def prunes(self) -> bool:
        return self.spec.reduces and (bool(self.begin_layers) or any(self.r))

    @property
    def input_tokens(self) -> int:
        """Tokens entering block 0: CLS, the patches and the protected tokens."""
        return 1 + self.num_patches + self.protected

    def candidates(self, stage: int) -> int:
        """How many tokens (CLS and protected tokens excluded) stage `stage` chooses from."""
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
        if not self.prunes or not self.begin_layers:
            return []
        return [s for s in range(len(self.keep)) if self.stage_is_active(s)]

    def group_end(self, stage: int) -> int:
        """The block after the last block of stage `stage`'s group (its look-ahead runs up to here)."""
        later = self.begin_layers[stage + 1:]
        return later[0] if later else self.depth

    def merging_blocks(self) -> list[int]:
        """Inside-block methods: the blocks that merge (r > 0) when the method prunes."""
        return [i for i, r in enumerate(self.r) if r > 0] if self.prunes else []

    def tokens_per_block(self) -> list[int]:
        """Tokens entering each block (CLS and protected tokens included) when the schedule prunes."""
        if self.r:
            counts, tokens = [], self.input_tokens
            for r in self.r:
                counts.append(tokens)
                tokens -= r
            return counts
        tokens, counts, stage = self.input_tokens, [], 0
        active = self.active_stages()
        for block in range(self.depth):
            while stage < len(self.begin_layers) and self.begin_layers[stage] == block:
                if stage in active:
                    tokens = 1 + self.keep[stage] + int(self.merge) + self.protected
                stage += 1
            counts.append(tokens)
        return counts

    def mlp_tokens_per_block(self) -> list[int]:
        """Tokens reaching each block's MLP branch: fewer than entering only where a method merges inside blocks."""
        counts = self.tokens_per_block()
        return [n - r for n, r in zip(counts, self.r)] if self.r else counts

    def options(self) -> dict:
        """The `make_schedule` options that rebuild this schedule exactly (exact counts, not ratios)."""
        options = {"method": self.method, "mix": self.mix}
        if self.protected:
            options["protected"] = self.protected
        if self.r:
            options["r"] = tuple(self.r)
        elif self.begin_layers:
            options.update(begin_layers=tuple(self.begin_layers), keep=tuple(self.keep))
            if self.spec.removal == MERGE_ONE and not self.merge:
                options["merge"] = False
        return options


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
                  mix: float = DEFAULT_MIX, *,
                  keep: Optional[Sequence[int]] = None,
                  protected: int = 0,
                  r=None, decreasing: bool = False, merge: Optional[bool] = None) -> ReductionSchedule:
    """Builds and validates a schedule for a tower with `num_patches` patches and `depth` blocks.

    Between-block methods take keep_ratios (of the ORIGINAL patch count, floored: docs/elip.md) or exact keep
    counts (`keep=(118,)`), at most one of the two; neither: the method's default. Inside-block methods (ToMe)
    take r: one int for every block, or one per block; decreasing=True makes r fall from 2r to 0 over the blocks.
    protected: learnable tokens after the patches that are never pruned or merged.
    merge=False: a method that fuses each stage's pruned tokens into one merged token (ELIP, EViT) drops them
    instead (EViT without its fused token, the comparison Patch Ranking draws); None: the method's own choice.
    Raises ValueError naming the bad value and the valid range.
    """
    spec = get_method(method)
    if num_patches < 1 or depth < 1:
        raise ValueError(f"need num_patches >= 1 and depth >= 1, got {num_patches} and {depth}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"reduction mix (lambda) must be in [0, 1], got {mix}")
    if isinstance(protected, bool) or not isinstance(protected, int) or protected < 0:
        raise ValueError(f"protected (learnable tokens never pruned) must be an int >= 0, got {protected!r}")
    if merge is not None and spec.removal != MERGE_ONE:
        raise ValueError(f"merge applies to methods that fuse each stage's pruned tokens into one merged token "
                         f"(removal {MERGE_ONE!r}); {method!r} has removal {spec.removal!r}")
    stage_options = {k: v for k, v in (("begin_layers", begin_layers), ("keep_ratios", keep_ratios), ("keep", keep))
                     if v is not None}
    if spec.placement == INSIDE_BLOCKS:
        if stage_options:
            raise ValueError(f"{method!r} merges inside blocks and takes r (tokens merged per block), not "
                             f"{', '.join(sorted(stage_options))}")
        return _inside_block_schedule(spec, num_patches, depth, mix, protected, r, decreasing)
    if r is not None or decreasing:
        raise ValueError(f"r and decreasing belong to methods that merge inside blocks; {method!r} takes "
                         "begin_layers with keep_ratios or keep")
    if spec.placement != BETWEEN_BLOCKS:
        return ReductionSchedule(method, (), (), num_patches, depth, True, mix, protected)
    return _stage_schedule(spec, num_patches, depth, begin_layers, keep_ratios, keep, mix, protected,
                           spec.removal == MERGE_ONE and merge is not False)  # None: the method's choice


def _stage_schedule(spec, num_patches, depth, begin_layers, keep_ratios, keep, mix, protected,
                    merge) -> ReductionSchedule:
    method = spec.name
    if keep_ratios is not None and keep is not None:
        raise ValueError("give keep_ratios or keep (exact counts), not both")
    default = spec.default_options(num_patches, depth)
    begin = tuple(begin_layers) if begin_layers is not None else tuple(default["begin_layers"])
    if keep is None and keep_ratios is None and "keep" in default:  # a default of exact counts
        keep = default["keep"]
    if keep is not None:
        counts, written = tuple(keep), tuple(f"{k}" for k in keep)
    else:
        ratios = tuple(keep_ratios) if keep_ratios is not None else tuple(default["keep_ratios"])
        if spec.max_stages is not None and (len(begin) > spec.max_stages or len(ratios) > spec.max_stages):
            _refuse_stages(spec, depth, begin, f"keep_ratios={ratios}")
        if len(begin) != len(ratios):
            raise ValueError(f"begin_layers {begin} and keep_ratios {ratios} must have the same length")
        for i, ratio in enumerate(ratios):
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"keep_ratios[{i}] = {ratio!r} is out of range: must be in (0, 1]")
        counts = tuple(keep_count(ratio, num_patches) for ratio in ratios)
        written = tuple(f"floor({ratio} * {num_patches})" for ratio in ratios)
    if spec.max_stages is not None and len(counts) > spec.max_stages:
        _refuse_stages(spec, depth, begin, f"keep={counts}")
    if len(begin) != len(counts):
        raise ValueError(f"begin_layers {begin} and keep {counts} must have the same length")
    last = depth - 1 if spec.last_valid_block is None else spec.last_valid_block
    for i, layer in enumerate(begin):
        if isinstance(layer, bool) or not isinstance(layer, int) or not spec.first_valid_block <= layer <= last:
            if spec.max_stages is not None:
                _refuse_stages(spec, depth, begin, f"keep={counts}")
            raise ValueError(f"begin_layers[{i}] = {layer!r} is out of range: must be an int in "
                             f"[{spec.first_valid_block}, {last}] for a {depth}-block tower with method {method!r}")
        if i and layer <= begin[i - 1]:
            raise ValueError(f"begin_layers must be strictly increasing, got {begin}")
    for i, k in enumerate(counts):
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"keep[{i}] = {k!r} must be an int (an exact count of candidates)")
    schedule = ReductionSchedule(method, begin, counts, num_patches, depth, merge, mix, protected)
    for stage, k in enumerate(counts):
        available = schedule.candidates(stage)
        if not 1 <= k <= available:
            raise ValueError(
                f"stage {stage} (before block {begin[stage]}) keeps {k} patches ({written[stage]}) but selects "
                f"from {available} candidates: keep must be in [1, {available}] (equal keeps everything)")
    return schedule


def _refuse_stages(spec, depth, begin, keeps):
    first = spec.first_valid_block
    last = depth - 1 if spec.last_valid_block is None else spec.last_valid_block
    stages = f"{spec.max_stages} stage" + ("s" if spec.max_stages != 1 else "")
    where = f"before block {first}" if first == last else f"each before one of blocks {first} to {last}"
    raise ValueError(f"{spec.name} prunes in at most {stages}, {where} of a {depth}-block tower: got "
                     f"begin_layers={begin}, {keeps}")


def _inside_block_schedule(spec, num_patches, depth, mix, protected, r, decreasing) -> ReductionSchedule:
    from elip_jax.reduction import tome  # the in-block schedule arithmetic (clamping) lives with the merging

    default = spec.default_options(num_patches, depth)
    if r is None:
        r, decreasing = default["r"], default.get("decreasing", False) or decreasing
    if not isinstance(r, int):
        r = tuple(r)
    per_block = tome.tome_schedule(1 + num_patches + protected, depth, r, protected, decreasing)
    return ReductionSchedule(spec.name, (), (), num_patches, depth, True, mix, protected, tuple(per_block.r))
