"""Which patches each pruning stage keeps, prunes and merges, drawn on the image.

    python -m elip_jax.visualize --image cat.jpg --caption "a photo of a cat" --out stages.png \
        [--model tiny-12 | --checkpoint DIR] [--method elip]

One panel per active stage, after the input: patches that still have a token of their own are shown as they
are, pruned patches greyed, and the pruned patches' share of the merged token(s) tinted (stronger = larger
merge weight). Text-guided methods are guided by the caption's embedding, as in pre-training.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from elip_jax.fileio import atomic_write_bytes
from elip_jax.reduction.ops import MERGE_EPS


# Figure layout (pixels).
MARGIN = 8
TITLE_HEIGHT = 16
HEADER_HEIGHT = 20
TINT = np.array([255, 120, 0], np.float32)  # merged-token share
MAX_TINT = 0.6  # keeps the greyed patch visible under the strongest tint


# ---------------------------------------------------------------------------------------------- image

def clip_preprocess(image: Image.Image, size: int) -> tuple[Image.Image, np.ndarray]:
    """CLIP's evaluation preprocessing, the pipeline's own: (the crop to draw, its normalised pixels)."""
    from elip_jax.data.normalize import normalize_images
    from elip_jax.data.preprocess import eval_resize_crop
    crop = eval_resize_crop(np.asarray(image.convert("RGB")), size)
    return Image.fromarray(crop), np.asarray(normalize_images(crop), np.float32)


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


# ---------------------------------------------------------------------------------------------- model

def load_model(model_name: str, checkpoint: Optional[str], method: str, seed: int):
    """(model with `method`'s default schedule, variables): a checkpoint's, or random weights."""
    import jax
    import elip_jax

    if checkpoint is None:
        model = elip_jax.create_model(model_name, reduction=method)
        image = np.zeros((1, model.config.image_size, model.config.image_size, 3), np.float32)
        tokens = np.zeros((1, model.config.context_length), np.int32)
        return model, model.init(jax.random.PRNGKey(seed), image, tokens)
    try:
        return elip_jax.load_pretrained(checkpoint, reduction=method)  # (model, variables)
    except (OSError, ValueError) as error:  # elip_jax.convert.ConversionError is a ValueError
        raise SystemExit(f"cannot load checkpoint {checkpoint!r}: {error}") from error


def tokenize_caption(caption: str, context_length: int):
    import elip_jax
    return np.asarray(elip_jax.tokenize([caption], context_length=context_length))


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
    kwargs = {}
    if schedule.text_guided:
        kwargs["guide"] = model.apply(variables, jnp.asarray(tokens), normalize=True, method=model.encode_text)
    if schedule.method == "random":
        kwargs["rng"] = jax.random.PRNGKey(rng_seed)
    _, state = model.apply(variables, jnp.asarray(image[None]), method=model.encode_image,
                           mutable=["intermediates"], **kwargs)
    visual = state["intermediates"].get("visual", {})
    kept = [np.asarray(k)[0] for k in visual.get("kept_indices", ())]
    counts = [schedule.candidates(s) for s in schedule.active_stages()]
    scores = captured_scores(visual, counts) if schedule.merge else None
    return kept, None if scores is None else [s[0] for s in scores]


# ---------------------------------------------------------------------------------------------- drawing

def figure_size(num_panels: int, panel_size: int) -> tuple[int, int]:
    """(width, height) of the figure: panels in a row under a caption header, each with a title."""
    width = num_panels * panel_size + (num_panels + 1) * MARGIN
    height = HEADER_HEIGHT + TITLE_HEIGHT + panel_size + MARGIN
    return width, height


def patch_grid_mask(values: np.ndarray, grid: int, panel_size: int) -> np.ndarray:
    """[P] per-patch values -> [panel, panel] per-pixel values (patch (r, c) is row-major index r*grid + c)."""
    cells = np.asarray(values, np.float32).reshape(grid, grid)
    rows = (np.arange(panel_size) * grid) // panel_size
    return cells[rows][:, rows]


def stage_panel(display: np.ndarray, stage: StageMap, grid: int) -> np.ndarray:
    """Kept patches as they are; pruned ones greyed and dimmed; tinted by their share in the merged token."""
    size = display.shape[0]
    grey = display.mean(axis=-1, keepdims=True) * 0.45 + 70.0
    kept = patch_grid_mask(stage.kept, grid, size)[..., None]
    weight = stage.merged_weight
    strength = np.sqrt(weight / weight.max()) * MAX_TINT if weight.max() > 0 else np.zeros_like(weight)
    tint = patch_grid_mask(strength, grid, size)[..., None]
    pruned = grey * (1 - tint) + TINT * tint
    return np.clip(kept * display + (1 - kept) * pruned, 0, 255).astype(np.uint8)


def draw_figure(image: Image.Image, stages: Sequence[StageMap], titles: Sequence[str], caption: str,
                grid: int, panel_size: int) -> Image.Image:
    display = np.asarray(image.convert("RGB").resize((panel_size, panel_size), Image.BICUBIC), np.float32)
    panels = [display.astype(np.uint8)] + [stage_panel(display, s, grid) for s in stages]
    figure = Image.new("RGB", figure_size(len(panels), panel_size), "white")
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    draw.text((MARGIN, 4), caption, fill="black", font=font)
    for i, (panel, title) in enumerate(zip(panels, ["input"] + list(titles))):
        x = MARGIN + i * (panel_size + MARGIN)
        draw.text((x, HEADER_HEIGHT), title, fill="black", font=font)
        figure.paste(Image.fromarray(panel), (x, HEADER_HEIGHT + TITLE_HEIGHT))
    return figure


def stage_titles(schedule, stages: Sequence[StageMap]) -> list[str]:
    titles = []
    for stage_id, stage in zip(schedule.active_stages(), stages):
        merged = f" + {stage.merged_tokens} merged" if stage.merged_tokens else ""
        titles.append(f"before block {schedule.begin_layers[stage_id]}: "
                      f"{int(stage.kept.sum())}/{schedule.num_patches} patches{merged}")
    return titles


def save_png(figure: Image.Image, path: str) -> None:
    """Atomic: written beside `path`, then renamed."""
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- CLI

def visualize(image_path: str, caption: str, out: str, model_name: str = "tiny-12",
              checkpoint: Optional[str] = None, method: str = "elip", seed: int = 0,
              panel_size: Optional[int] = None) -> tuple[int, int]:
    """Draws the figure to `out`; returns its (width, height)."""
    model, variables = load_model(model_name, checkpoint, method, seed)
    config, schedule = model.config, model.reduction
    if not schedule.prunes:
        raise SystemExit(f"method {method!r} prunes nothing: nothing to draw; choose elip, elip_inline, evit or random")
    try:
        source = Image.open(image_path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read image {image_path!r}: {error}") from error
    crop, pixels = clip_preprocess(source, config.image_size)
    tokens = tokenize_caption(caption, config.context_length)
    kept, scores = pruning_decisions(model, variables, pixels, tokens, seed)
    stages = trace_stages(kept, config.num_patches, schedule.merge, scores)
    panel = panel_size or max(config.image_size, 224)
    figure = draw_figure(crop, stages, stage_titles(schedule, stages),
                         f"{method} on {model_name if checkpoint is None else checkpoint}: {caption!r}",
                         config.grid_size, panel)
    save_png(figure, out)
    return figure.size


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m elip_jax.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    p.add_argument("--caption", required=True, help="the paired caption that guides text-guided methods")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--model", default="tiny-12", help="architecture for random weights (without --checkpoint)")
    p.add_argument("--checkpoint", help="directory for elip_jax.load_pretrained; random weights without it")
    p.add_argument("--method", default="elip", choices=["elip", "elip_inline", "evit", "random"])
    p.add_argument("--seed", type=int, default=0, help="random-weight init and random-masking key")
    p.add_argument("--panel-size", type=int, default=None, help="pixels per panel (default max(image_size, 224))")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    size = visualize(args.image, args.caption, args.out, args.model, args.checkpoint, args.method, args.seed,
                     args.panel_size)
    print(f"wrote {args.out} ({size[0]}x{size[1]})", file=sys.stderr)


if __name__ == "__main__":
    main()
