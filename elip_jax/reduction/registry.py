"""The registry of token-reduction methods: one `ReductionMethod` per name, answering every question the rest
of elip_jax asks about a method (when it prunes, how, where, with what defaults, at what cost).

Nothing outside this package asks for a method by name: it asks the method. Adding a method is one module that
builds a `ReductionMethod` and calls `register` (see `elip_jax.reduction.tome` for a whole example).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

# What makes a call prune (ReductionMethod.trigger).
NEVER = "never"  # `none`
ALWAYS = "always"  # needs nothing but the image: prunes in training and at inference
GUIDE = "guide"  # needs the paired caption's embedding (text-guided; training only)
RNG = "rng"  # needs a random key (random masking: the step's key in training, per-example keys at evaluation)
TRIGGERS = (NEVER, ALWAYS, GUIDE, RNG)

# Where the method reduces tokens (ReductionMethod.placement).
NOWHERE = "nowhere"
BETWEEN_BLOCKS = "between_blocks"  # stages before named blocks: score, keep the top k, merge or drop the rest
INSIDE_BLOCKS = "inside_blocks"  # between the attention and the MLP branch of blocks (ToMe-style merging)
PLACEMENTS = (NOWHERE, BETWEEN_BLOCKS, INSIDE_BLOCKS)

# What becomes of the tokens a method removes (ReductionMethod.removal).
KEEP_ALL = "keep_all"
MERGE_ONE = "merge_one"  # fused into one extra token per stage, score-weighted, placed last among the candidates
DROP = "drop"  # gone
MERGE_PAIRS = "merge_pairs"  # size-weighted averages into their most similar partners (ToMe)
REMOVALS = (KEEP_ALL, MERGE_ONE, DROP, MERGE_PAIRS)

# The schedule parameter a reduction sweep varies (ReductionMethod.sweep_parameter).
SWEEP_KEEP_RATIOS = "keep_ratios"
SWEEP_R = "r"


@dataclasses.dataclass(frozen=True)
class ReductionMethod:
    """One token-reduction method and everything the towers, schedules, accounting and commands need to know.

    name: how configs and command lines pick it. summary: one line for help texts.
    trigger: what makes a call prune (NEVER, ALWAYS, GUIDE, RNG).
    placement: BETWEEN_BLOCKS (stages, `begin_layers`/`keep`) or INSIDE_BLOCKS (`r` per block), or NOWHERE.
    removal: MERGE_ONE, DROP, MERGE_PAIRS or KEEP_ALL (see the constants).
    first_valid_block / last_valid_block (None: the last block): where a stage may begin; max_stages: None for any.
    default_options(num_patches, depth) -> the schedule options used when none are given, e.g.
        {'begin_layers': (2, 4, 10), 'keep_ratios': (0.9, 0.65, 0.4)} or {'r': 8}.
    serves_at_inference: prunes when encoding an image alone (evaluation, retrieval embeddings).
    per_example_keys: an RNG method whose scorer also takes one key per example (a batch of keys instead of one): an
        evaluation then prunes, each example drawing from a key made of a seed and its index in the split, so the
        subset an image gets depends on nothing else (batch size, position, devices).
    scorer: a Flax module class (constructed with no arguments, named `reduction_scorer` in the vision tower, so
        its parameters, if any, live at params['visual']['reduction_scorer']); called with `StageInputs`,
        returns [B, C] fp32 candidate scores without gradient. None for methods that score nothing.
    needs_previous_cls_attention: the scorer reads the CLS-row attention of the block before each stage.
    scoring_flops(schedule, width, heads, mlp_ratio) -> FLOPs spent choosing tokens, one entry per active stage
        (BETWEEN_BLOCKS) or per block (INSIDE_BLOCKS); forward only, no gradient. flops_formula: the same in words.
    sweep_parameter: what a reduction sweep varies ('keep_ratios' or 'r').
    """

    name: str
    summary: str
    trigger: str
    placement: str
    removal: str
    default_options: Callable[[int, int], dict]
    scoring_flops: Callable[..., list]
    flops_formula: str
    serves_at_inference: bool = False
    per_example_keys: bool = False
    scorer: Optional[Any] = None
    needs_previous_cls_attention: bool = False
    first_valid_block: int = 1
    last_valid_block: Optional[int] = None
    max_stages: Optional[int] = None
    sweep_parameter: str = SWEEP_KEEP_RATIOS

    def __post_init__(self):
        for field, value, allowed in (("trigger", self.trigger, TRIGGERS), ("placement", self.placement, PLACEMENTS),
                                      ("removal", self.removal, REMOVALS)):
            if value not in allowed:
                raise ValueError(f"ReductionMethod {self.name!r}: {field} must be one of {allowed}, got {value!r}")
        if self.per_example_keys and self.trigger != RNG:
            raise ValueError(f"ReductionMethod {self.name!r}: per_example_keys applies to methods whose trigger is "
                             f"{RNG!r} (they draw from a key); trigger is {self.trigger!r}")

    @property
    def reduces(self) -> bool:
        return self.placement != NOWHERE

    @property
    def text_guided(self) -> bool:
        return self.trigger == GUIDE

    @property
    def merges(self) -> bool:
        """Whether removed tokens live on in merged tokens (MERGE_ONE or MERGE_PAIRS)."""
        return self.removal in (MERGE_ONE, MERGE_PAIRS)

    def prunes_with(self, guide_given: bool, rng_given: bool) -> bool:
        """Whether a call with (or without) a guide and a key prunes at all."""
        return {NEVER: False, ALWAYS: True, GUIDE: guide_given, RNG: rng_given}[self.trigger]

    @property
    def evaluation_needs_keys(self) -> bool:
        """Whether an evaluation passes `encode_image` one key per example (rng: a batch of keys): the RNG methods that
        take them. The others get the image alone (no guide: no image is guided by its own caption)."""
        return self.trigger == RNG and self.per_example_keys

    @property
    def prunes_at_evaluation(self) -> bool:
        """Whether an evaluation prunes: methods that serve at inference, and those given per-example keys."""
        if not self.reduces:
            return False
        return (self.serves_at_inference and self.prunes_with(guide_given=False, rng_given=False)
                or self.evaluation_needs_keys)


_REGISTRY: dict[str, ReductionMethod] = {}


def register(method: ReductionMethod) -> ReductionMethod:
    """Adds `method` under its name; registering a second, different method under a taken name is an error."""
    if not isinstance(method, ReductionMethod):
        raise TypeError(f"register takes a ReductionMethod, got {type(method).__name__}")
    existing = _REGISTRY.get(method.name)
    if existing is not None and existing != method:
        raise ValueError(f"a reduction method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> ReductionMethod:
    """The registered method called `name`; ValueError listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"reduction method must be one of {registered_methods()}, got {name!r}") from None


def registered_methods() -> tuple:
    """Every registered method's name, in registration order (`none` first)."""
    return tuple(_REGISTRY)


def inference_methods() -> tuple:
    """The methods that can encode an image alone: `none` and those that prune without a guide or a key."""
    return tuple(name for name, m in _REGISTRY.items() if m.serves_at_inference or not m.reduces)


def evaluation_methods() -> tuple:
    """The methods an evaluation may name: those that prune at inference, `none`, the text-guided ones (which
    then do not prune: no image is guided by its own caption in an evaluation), and the RNG methods that take
    per-example keys (`random`, seeded). An RNG method that takes only one key per batch cannot be evaluated."""
    return tuple(name for name, m in _REGISTRY.items() if m.trigger != RNG or m.per_example_keys)


def unregister(name: str) -> ReductionMethod:
    """Removes a method (tests that register a throw-away method clean up with this)."""
    method = get_method(name)
    del _REGISTRY[name]
    return method
