"""Which patches each pruning stage keeps, prunes and merges, drawn on the image.

    python -m elip_jax.visualize --image cat.jpg --caption "a photo of a cat" --out stages.png \\
        [--model tiny-12 | --checkpoint DIR] [--method elip]

DIR is a converted folder (python -m elip_jax.convert) or a training workdir (its newest checkpoint).
For methods that prune between blocks: one panel per active stage, after the input. Patches that still have a
token of their own are drawn as they are; pruned patches are dimmed; with merging, a dot on each pruned patch
shows its weight in the merged token(s) (dot area proportional to weight). For methods that merge inside blocks
(tome): one panel after each of a few blocks, the patches that one token holds painted in their mean colour
and outlined together; patches still alone are drawn as they are. A legend under the panels says so.
Without --checkpoint the weights are random, and a banner across the figure says that the choices then show only
the mechanics.
Text-guided methods are guided by the caption's embedding, as in pre-training.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from elip_jax.command_line import ArgumentParser, UsageError, check_output_file, run_command
from elip_jax.fileio import atomic_write_bytes
from elip_jax.reduction import registered_methods
from elip_jax.reduction.ops import MERGE_EPS
from elip_jax.reduction.registry import INSIDE_BLOCKS, RNG, get_method

# Methods that reduce something to draw, from the registry (`none` reduces nothing).
PRUNING_METHODS = tuple(m for m in registered_methods() if get_method(m).reduces)
MERGE_PANELS = 4  # inside-block methods: panels after this many blocks, spread over the tower
GROUP_EDGE = (255, 255, 255)  # outline around the patches one merged token holds

# Figure layout (pixels) and colours.
MARGIN = 10
FONT_SIZE = 14
LINE_HEIGHT = 18
MIN_PANEL = 256  # small images (the built-in dataset is 64-96 px) are drawn at least this large
MIN_CELL = 16  # and every patch at least this many pixels wide, so its dot can be read
MAX_PANEL = 1024
SWATCH = 24
DIM_SCALE, DIM_OFFSET = 0.25, 20.0  # pruned patches: grey, a quarter of their brightness
PRUNED_EDGE = (110, 110, 110)  # outline of each pruned patch, so single patches can be counted
DOT = (110, 170, 225)  # merge weight: a muted cool colour, not a highlight
DOT_FILL = 0.3  # radius of the largest dot, as a fraction of the patch side
NOTE_BACKGROUND = (170, 20, 20)  # the random-weights banner
NOTE_TEXT = (255, 255, 255)
RANDOM_WEIGHTS_NOTE = ("RANDOM WEIGHTS (no --checkpoint): these choices show the mechanics only, "
                       "not what a trained model keeps.")


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size)


# ---------------------------------------------------------------------------------------------- image

def clip_preprocess(image: Image.Image, size: int) -> tuple[Image.Image, np.ndarray]:
    """CLIP's evaluation preprocessing, the pipeline's own: (the crop to draw, its normalised pixels)."""
    from elip_jax.data.normalize import normalize_images
    from elip_jax.data.preprocess import eval_resize_crop
    crop = eval_resize_crop(np.asarray(image.convert("RGB")), size)
    return Image.fromarray(crop), np.asarray(normalize_images(crop), np.float32)


def read_image(path: str) -> Image.Image:
    """The image, fully decoded (a truncated file fails here, before any model is built)."""
    if os.path.isdir(path):
        raise UsageError(f"--image {path!r} is a folder; expected an image file")
    try:
        with Image.open(path) as source:
            source.load()
            return source.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UsageError(f"cannot read image {path!r}: {error}") from error




# ---------------------------------------------------------------------------------------------- mapping

@dataclasses.dataclass
class StageMap:
    """The state of the patches after one pruning stage, for one image.

    kept: [P] bool, the patch still has a token of its own. merged_weight: [P] float, the patch's share in
    the merged tokens alive after this stage (0 for kept patches; with merging, every pruned patch has some).
    merged_tokens: how many merged tokens are alive (the new one, and earlier ones a stage chose to keep).
    """

    kept: np.ndarray
    merged_weight: np.ndarray
    merged_tokens: int = 0


def merge_weights(scores: Optional[np.ndarray], pruned: np.ndarray) -> np.ndarray:
    """The model's merge weights a_pruned / (sum a_pruned + eps); uniform over the pruned when the scores are
    not known."""
    if scores is None:
        return pruned / max(pruned.sum(), 1)
    weights = np.where(pruned, np.asarray(scores, np.float64), 0.0)
    return weights / (weights.sum() + MERGE_EPS)


def trace_stages(kept_indices: Sequence[np.ndarray], num_patches: int, merge: bool = True,
                 scores: Optional[Sequence[Optional[np.ndarray]]] = None) -> list[StageMap]:
    """Maps each stage's kept candidate indices (one image) back to original patch positions.

    Each token is tracked as its composition over the P original patches: a patch token is one-hot, a merged
    token the weighted sum of the compositions it fused. Stage 0's candidates are the patches in order; a
    later stage's are the previous stage's kept tokens in order, then its merged token last.
    scores: per stage the [C] candidate scores (for the merge weights), or None for uniform weights.
    """
    compositions = np.eye(num_patches)  # [tokens, P]
    is_merged = np.zeros(num_patches, bool)
    maps = []
    for stage, kept in enumerate(kept_indices):
        kept = np.asarray(kept).reshape(-1)
        candidates = compositions.shape[0]
        if kept.size and (kept.min() < 0 or kept.max() >= candidates):
            raise ValueError(f"stage {stage}: kept indices must be in [0, {candidates}) (the stage's candidates); "
                             f"got values in [{kept.min()}, {kept.max()}]")
        pruned = np.ones(candidates, bool)
        pruned[kept] = False
        next_compositions, next_is_merged = compositions[kept], is_merged[kept]
        if merge:
            stage_scores = scores[stage] if scores is not None else None
            if stage_scores is not None and np.shape(stage_scores) != (candidates,):
                raise ValueError(f"stage {stage}: scores must have shape ({candidates},), got {np.shape(stage_scores)}")
            merged = merge_weights(stage_scores, pruned) @ compositions
            next_compositions = np.concatenate([next_compositions, merged[None]], axis=0)
            next_is_merged = np.append(next_is_merged, True)
        compositions, is_merged = next_compositions, next_is_merged
        maps.append(StageMap(kept=compositions[~is_merged].sum(axis=0) > 0,
                             merged_weight=compositions[is_merged].sum(axis=0),
                             merged_tokens=int(is_merged.sum())))
    return maps


@dataclasses.dataclass
class MergeMap:
    """After one block of a method that merges inside blocks (tome), for one image: which token holds each patch.

    token_of_patch: [P] int, the index of the token that holds the patch. group_size: [P] how many patches that
    token holds (1: the patch is alone). tokens: tokens leaving the block (CLS and protected ones included).
    """

    block: int
    token_of_patch: np.ndarray
    group_size: np.ndarray
    tokens: int


def panel_blocks(merging: Sequence[int], panels: int = MERGE_PANELS) -> list[int]:
    """Up to `panels` of the merging blocks, spread evenly, the last one always among them."""
    n = min(panels, len(merging))
    return [merging[(k + 1) * len(merging) // n - 1] for k in range(n)] if n else []


def trace_merges(matchings: Sequence, schedule, panels: int = MERGE_PANELS) -> list[MergeMap]:
    """Follows one image's merges (one `tome.Matching` per merging block, batch 1) with `tome.merge_sum` on a
    source map, and maps the tokens after a few blocks back to the patches they hold."""
    from elip_jax.reduction import tome

    merging = schedule.merging_blocks()
    if len(matchings) != len(merging):
        raise ValueError(f"{len(merging)} blocks merge but {len(matchings)} matchings were recorded")
    chosen = set(panel_blocks(merging, panels))
    sources = tome.initial_sources(1, schedule.input_tokens)
    maps = []
    for block, matching in zip(merging, matchings):
        sources = tome.merge_sum(sources, matching)
        if block in chosen:
            held = np.asarray(sources[0])[:, 1:1 + schedule.num_patches]  # [tokens, P]
            token_of_patch = held.argmax(axis=0)
            maps.append(MergeMap(block, token_of_patch, held.sum(axis=1)[token_of_patch], held.shape[0]))
    return maps


def merge_titles(maps: Sequence[MergeMap]) -> list[tuple[str, str, str]]:
    titles = []
    for m in maps:
        alone = int(np.sum(m.group_size == 1))
        groups = len(set(m.token_of_patch[m.group_size > 1].tolist()))
        largest = int(np.max(m.group_size, initial=1))
        titles.append((f"after block {m.block}: {m.tokens} tokens", f"{alone} patches alone",
                       f"{m.group_size.size - alone} in {groups} merged (largest {largest})"))
    return titles


# ---------------------------------------------------------------------------------------------- model

def load_model(model_name: str, checkpoint: Optional[str], method: str, seed: int):
    """(model with `method`'s default schedule, variables, name to show): a checkpoint's (a converted folder or
    a training workdir), or random weights for `model_name`. Refuses a schedule that prunes nothing."""
    from elip_jax import checkpoints
    from elip_jax.models.clip import create_model
    from elip_jax.models.config import list_models

    if checkpoint is None:
        if model_name not in list_models():
            raise UsageError(f"--model {model_name!r} is not a model name; known: {', '.join(list_models())} "
                             "(a converted folder or a training workdir goes to --checkpoint)")
        model = create_model(model_name, reduction=method)
        require_pruning(model, model_name)  # before the weights are drawn: that compiles
        return model, checkpoints.random_variables(model, seed), model_name
    if not os.path.isdir(checkpoint):
        raise UsageError(f"--checkpoint {checkpoint!r} " + ("is a file" if os.path.exists(checkpoint) else
                         "does not exist") + ": expected a converted folder (from python -m elip_jax.convert) "
                         "or a training workdir (from python -m elip_jax.train)")
    try:
        model, variables, name = checkpoints.load(checkpoint, reduction=method)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load checkpoint {checkpoint!r}: {error}") from error
    require_pruning(model, name)
    return model, variables, name


def require_pruning(model, name: str) -> None:
    config, schedule = model.config, model.reduction
    if not (schedule.active_stages() or schedule.merging_blocks()):
        raise UsageError(f"{schedule.method!r} with its default schedule prunes nothing on {name} "
                         f"({config.vision_layers} blocks, {config.num_patches} patches): nothing to draw")


def tokenize_caption(caption: str, context_length: int):
    from elip_jax.tokenizer import tokenize
    return np.asarray(tokenize([caption], context_length=context_length))


def captured_scores(visual: dict, candidate_counts: Sequence[int]) -> Optional[list[np.ndarray]]:
    """Per stage [B, C] candidate scores as the model sowed them; None when they do not match the stages
    (then merge weights are drawn uniform)."""
    found = [np.asarray(s) for s in visual.get("scores", ())]
    if len(found) != len(candidate_counts) or any(f.shape[1] != c for f, c in zip(found, candidate_counts)):
        return None
    return found


def pruning_decisions(model, variables, image: np.ndarray, tokens: np.ndarray, rng_seed: int = 0):
    """Runs the image encoder as in pre-training; returns (kept indices per stage, scores per stage or None)
    for the single image."""
    import jax
    import jax.numpy as jnp

    schedule = model.reduction

    # One compiled program: run op by op, a 12-block model (ToMe's matching in every block) takes a minute on
    # a CPU, compiled a few seconds.
    @jax.jit
    def decide(variables, images, tokens, key):
        kwargs = {}
        if schedule.text_guided:
            kwargs["guide"] = model.apply(variables, tokens, normalize=True, method=model.encode_text)
        if schedule.spec.trigger == RNG:
            kwargs["rng"] = key
        _, state = model.apply(variables, images, method=model.encode_image, mutable=["intermediates"], **kwargs)
        return state["intermediates"].get("visual", {})

    visual = decide(variables, jnp.asarray(image[None]), jnp.asarray(tokens), jax.random.PRNGKey(rng_seed))
    if schedule.spec.placement == INSIDE_BLOCKS:
        return list(visual.get("tome_matchings", ())), None
    kept = [np.asarray(k)[0] for k in visual.get("kept_indices", ())]
    counts = [schedule.candidates(s) for s in schedule.active_stages()]
    scores = captured_scores(visual, counts) if schedule.merge else None
    return kept, None if scores is None else [s[0] for s in scores]


# ---------------------------------------------------------------------------------------------- drawing

def default_panel_size(image_size: int, grid: int) -> int:
    """At least MIN_PANEL pixels and MIN_CELL pixels per patch; a whole number of pixels per patch."""
    side = max(image_size, MIN_PANEL, grid * MIN_CELL)
    return grid * math.ceil(side / grid)


def patch_grid_mask(values: np.ndarray, grid: int, panel_size: int) -> np.ndarray:
    """[P] per-patch values -> [panel, panel] per-pixel values (patch (r, c) is row-major index r*grid + c)."""
    cells = np.asarray(values, np.float32).reshape(grid, grid)
    rows = (np.arange(panel_size) * grid) // panel_size
    return cells[rows][:, rows]


def dimmed(display: np.ndarray) -> np.ndarray:
    """A pruned patch: grey, at a quarter of its brightness (no colour: colour would read as 'important')."""
    grey = display.mean(axis=-1, keepdims=True)
    return np.broadcast_to(grey * DIM_SCALE + DIM_OFFSET, display.shape)


def cell_box(index: int, grid: int, panel_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel bounds, inclusive, of patch `index` in a panel."""
    row, col = divmod(index, grid)
    bounds = lambda i: (-(-i * panel_size // grid), -(-(i + 1) * panel_size // grid) - 1)
    (top, bottom), (left, right) = bounds(row), bounds(col)
    return left, top, right, bottom


def dot_radius(weight: float, max_weight: float, cell: float) -> float:
    """Dot area proportional to the weight; the largest weight of the panel fills DOT_FILL of the patch."""
    if weight <= 0 or max_weight <= 0:
        return 0.0
    return max(math.sqrt(weight / max_weight) * DOT_FILL * cell, 1.0)


def stage_panel(display: np.ndarray, stage: StageMap, grid: int) -> np.ndarray:
    """Kept patches as they are; pruned ones dimmed and outlined; a dot on each merged one, its area
    proportional to the patch's weight in the merged token(s)."""
    size = display.shape[0]
    kept = patch_grid_mask(stage.kept, grid, size)[..., None]
    panel = np.clip(kept * display + (1 - kept) * dimmed(display), 0, 255).astype(np.uint8)
    picture = Image.fromarray(panel)
    draw = ImageDraw.Draw(picture)
    max_weight = float(np.max(stage.merged_weight, initial=0.0))
    for index in np.flatnonzero(~np.asarray(stage.kept)):
        left, top, right, bottom = cell_box(int(index), grid, size)
        draw.rectangle((left, top, right, bottom), outline=PRUNED_EDGE)
        radius = dot_radius(float(stage.merged_weight[index]), max_weight, right - left + 1)
        if radius:
            cx, cy = (left + right) / 2, (top + bottom) / 2
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=DOT)
    return np.asarray(picture)


def merge_panel(display: np.ndarray, merges: MergeMap, grid: int) -> np.ndarray:
    """Patches alone as they are; the patches one merged token holds painted in their mean colour and outlined
    together (a line wherever a neighbour belongs to another token)."""
    size = display.shape[0]
    boxes = [cell_box(i, grid, size) for i in range(grid * grid)]
    colours = np.array([display[t:b + 1, l:r + 1].reshape(-1, 3).mean(axis=0) for l, t, r, b in boxes])
    panel = display.copy()
    for token in np.unique(merges.token_of_patch[merges.group_size > 1]):
        members = np.flatnonzero(merges.token_of_patch == token)
        colour = colours[members].mean(axis=0)
        for i in members:
            left, top, right, bottom = boxes[i]
            panel[top:bottom + 1, left:right + 1] = colour
    picture = Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    owner = merges.token_of_patch.reshape(grid, grid)
    merged = (merges.group_size > 1).reshape(grid, grid)
    for row in range(grid):
        for col in range(grid):
            if not merged[row, col]:
                continue
            left, top, right, bottom = boxes[row * grid + col]
            other = lambda r, c: not (0 <= r < grid and 0 <= c < grid) or owner[r, c] != owner[row, col]
            if other(row - 1, col):
                draw.line((left, top, right, top), fill=GROUP_EDGE)
            if other(row + 1, col):
                draw.line((left, bottom, right, bottom), fill=GROUP_EDGE)
            if other(row, col - 1):
                draw.line((left, top, left, bottom), fill=GROUP_EDGE)
            if other(row, col + 1):
                draw.line((right, top, right, bottom), fill=GROUP_EDGE)
    return np.asarray(picture)


def merge_legend_entries(display: np.ndarray, grid: int) -> list[LegendEntry]:
    size = display.shape[0]
    left, top, right, bottom = cell_box((grid // 2) * grid + grid // 2, grid, size)
    patch = np.asarray(Image.fromarray(display[top:bottom + 1, left:right + 1].astype(np.uint8))
                       .resize((SWATCH, SWATCH), Image.BICUBIC), np.float32)
    alone = MergeMap(0, np.array([0]), np.array([1]), 1)
    together = MergeMap(0, np.array([0]), np.array([2]), 1)
    return [LegendEntry(merge_panel(patch, alone, 1), "alone: the patch still has a token of its own"),
            LegendEntry(merge_panel(patch, together, 1),
                        "merged: the patches one token holds, in their mean colour, outlined together")]


def wrap(text: str, width: int, typeface) -> list[str]:
    """Greedy word wrap to `width` pixels."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and typeface.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line]


@dataclasses.dataclass
class LegendEntry:
    swatch: np.ndarray  # [SWATCH, SWATCH, 3] uint8, drawn as the panels draw it
    text: str


def legend_entries(display: np.ndarray, grid: int, merge: bool) -> list[LegendEntry]:
    """What each look means, with swatches cut from a patch of this image and drawn by `stage_panel`."""
    size = display.shape[0]
    left, top, right, bottom = cell_box((grid // 2) * grid + grid // 2, grid, size)
    patch = np.asarray(Image.fromarray(display[top:bottom + 1, left:right + 1].astype(np.uint8))
                       .resize((SWATCH, SWATCH), Image.BICUBIC), np.float32)
    draw = lambda kept, weight: stage_panel(patch, StageMap(np.array([kept]), np.array([weight])), 1)
    pruned = "pruned: dimmed" + ("" if merge else ", dropped (this method does not merge)")
    entries = [LegendEntry(draw(True, 0.0), "kept: the patch still has a token of its own"),
               LegendEntry(draw(False, 0.0), pruned)]
    if merge:
        entries.append(LegendEntry(draw(False, 1.0), "merged: dot area = the patch's weight in the merged token"))
    return entries


def stage_titles(schedule, stages: Sequence[StageMap]) -> list[tuple[str, str, str]]:
    """Three lines per panel: where it prunes, what became of the patches, the largest merge weight."""
    titles = []
    for stage_id, stage in zip(schedule.active_stages(), stages):
        kept = int(np.sum(stage.kept))
        pruned = schedule.num_patches - kept
        if stage.merged_tokens:
            plural = "s" if stage.merged_tokens > 1 else ""
            fate = f"{kept} kept, {pruned} merged into {stage.merged_tokens} token{plural}"
            largest = f"largest dot: weight {100 * float(np.max(stage.merged_weight)):.0f} %"
        else:
            fate, largest = f"{kept} kept, {pruned} dropped", ""
        titles.append((f"before block {schedule.begin_layers[stage_id]}", fate, largest))
    return titles


def header_lines(method: str, source: str, caption: str, text_guided: bool, image_size: int, grid: int,
                 panel_size: int) -> list[str]:
    trigger = get_method(method).trigger
    guide = (f"guided by the caption {caption!r}" if text_guided
             else "the caption is not used" if trigger == RNG else "scored by the image alone (caption not used)")
    scale = f", drawn at {panel_size} px" if panel_size != image_size else ""
    return [f"{method} on {source}: {guide}",
            f"input {image_size}x{image_size} px, {grid}x{grid} = {grid * grid} patches{scale}"]


def draw_figure(image: Image.Image, stages: Sequence[StageMap], titles: Sequence[tuple[str, ...]],
                header: Sequence[str], grid: int, panel_size: int, merge: bool = True,
                random_weights: bool = False) -> Image.Image:
    """Banner (random weights only), header, one titled panel per stage after the input, legend."""
    display = np.asarray(image.convert("RGB").resize((panel_size, panel_size), Image.BICUBIC), np.float32)
    panels = [display.astype(np.uint8)] + [merge_panel(display, s, grid) if isinstance(s, MergeMap)
                                           else stage_panel(display, s, grid) for s in stages]
    width = len(panels) * panel_size + (len(panels) + 1) * MARGIN
    text_width = width - 2 * MARGIN
    typeface, bold = font(), font(FONT_SIZE + 1)

    note = wrap(RANDOM_WEIGHTS_NOTE, text_width, bold) if random_weights else []
    header_wrapped = [line for text in header for line in wrap(text, text_width, typeface)]
    merges_in_blocks = any(isinstance(s, MergeMap) for s in stages)
    legend = merge_legend_entries(display, grid) if merges_in_blocks else legend_entries(display, grid, merge)
    banner_height = (len(note) * LINE_HEIGHT + 2 * MARGIN) if note else 0
    header_top = banner_height + MARGIN
    titles_top = header_top + len(header_wrapped) * LINE_HEIGHT + MARGIN
    panels_top = titles_top + max(map(len, titles), default=1) * LINE_HEIGHT + 4
    legend_top = panels_top + panel_size + MARGIN
    height = legend_top + len(legend) * (SWATCH + 6) + MARGIN

    figure = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(figure)
    if note:
        draw.rectangle((0, 0, width - 1, banner_height - 1), fill=NOTE_BACKGROUND)
        for i, line in enumerate(note):
            draw.text((MARGIN, MARGIN + i * LINE_HEIGHT), line, fill=NOTE_TEXT, font=bold)
    for i, line in enumerate(header_wrapped):
        draw.text((MARGIN, header_top + i * LINE_HEIGHT), line, fill="black", font=typeface)
    for i, (panel, title) in enumerate(zip(panels, [("input",)] + list(titles))):
        x = MARGIN + i * (panel_size + MARGIN)
        for j, line in enumerate(title):
            draw.text((x, titles_top + j * LINE_HEIGHT), line, fill="black", font=typeface)
        figure.paste(Image.fromarray(panel), (x, panels_top))
    for i, entry in enumerate(legend):
        y = legend_top + i * (SWATCH + 6)
        figure.paste(Image.fromarray(entry.swatch), (MARGIN, y))
        draw.rectangle((MARGIN - 1, y - 1, MARGIN + SWATCH, y + SWATCH), outline=(0, 0, 0))
        draw.text((MARGIN + SWATCH + 8, y + (SWATCH - LINE_HEIGHT) // 2 + 2), entry.text, fill="black", font=typeface)
    figure.info["title"] = "; ".join(header)
    figure.info["legend"] = "; ".join(e.text for e in legend)
    if random_weights:
        figure.info["note"] = RANDOM_WEIGHTS_NOTE
    return figure


def save_png(figure: Image.Image, path: str) -> None:
    """Atomic: written beside `path`, then renamed. The legend and the note travel as PNG text too."""
    metadata = PngImagePlugin.PngInfo()
    for key in ("title", "legend", "note"):
        if key in figure.info:
            metadata.add_text(key, figure.info[key])
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG", pnginfo=metadata)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- CLI

def visualize(image_path: str, caption: str, out: str, model_name: str = "tiny-12",
              checkpoint: Optional[str] = None, method: str = "elip", seed: int = 0,
              panel_size: Optional[int] = None) -> tuple[int, int]:
    """Draws the figure to `out`; returns its (width, height). Bad input raises UsageError before anything
    compiles."""
    if method not in PRUNING_METHODS:
        raise UsageError(f"method {method!r} prunes nothing to draw; choose one of {', '.join(PRUNING_METHODS)}")
    source = read_image(image_path)
    check_output_file(out, "--out", ".png")
    if panel_size is not None and not 16 <= panel_size <= MAX_PANEL:
        raise UsageError(f"--panel-size must be in [16, {MAX_PANEL}] pixels, got {panel_size}")
    model, variables, name = load_model(model_name, checkpoint, method, seed)
    config, schedule = model.config, model.reduction
    crop, pixels = clip_preprocess(source, config.image_size)
    tokens = tokenize_caption(caption, config.context_length)
    kept, scores = pruning_decisions(model, variables, pixels, tokens, seed)
    if schedule.spec.placement == INSIDE_BLOCKS:
        stages = trace_merges(kept, schedule)
        titles = merge_titles(stages)
    else:
        stages = trace_stages(kept, config.num_patches, schedule.merge, scores)
        titles = stage_titles(schedule, stages)
    panel = panel_size or default_panel_size(config.image_size, config.grid_size)
    header = header_lines(method, name, caption, schedule.text_guided, config.image_size, config.grid_size, panel)
    figure = draw_figure(crop, stages, titles, header, config.grid_size, panel,
                         merge=schedule.merge, random_weights=checkpoint is None)
    save_png(figure, out)
    return figure.size



def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m elip_jax.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    p.add_argument("--caption", required=True, help="the paired caption that guides text-guided methods")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--model", default="tiny-12", help="architecture for random weights (without --checkpoint)")
    p.add_argument("--checkpoint", help="a converted folder or a training workdir; random weights without it")
    p.add_argument("--method", default="elip", choices=PRUNING_METHODS)
    p.add_argument("--seed", type=int, default=0, help="random-weight init and random-masking key")
    p.add_argument("--panel-size", type=int, default=None,
                   help=f"pixels per panel (default: the image size, at least {MIN_PANEL})")
    return p.parse_args(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    size = visualize(args.image, args.caption, args.out, args.model, args.checkpoint, args.method, args.seed,
                     args.panel_size)
    print(f"wrote {args.out} ({size[0]}x{size[1]})", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: exit code 0, or 2 with one `error: ...` line for bad input."""
    return run_command(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
