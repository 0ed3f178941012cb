"""`python -m elip_jax.evaluate.plot`: accuracy against XLA FLOPs per image, one curve per reduction method.

    python -m elip_jax.evaluate.plot none.json evit.json tome.json patch_ranking.json --output accuracy_flops.png

Reads what `python -m elip_jax.evaluate` wrote (single results and --reduction-sweep files) for one model, one
dataset, one split and one task, and draws each method's points joined in order of FLOPs, with axis labels, a
legend and a title naming the model and the dataset. Drawn with Pillow (a dependency already), not matplotlib.
"""
from __future__ import annotations

import io
import json
import math
from typing import Optional, Sequence

from elip_jax.command_line import ArgumentParser, UsageError, check_output_file, run_command
from elip_jax.data.names import canonical_name

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194))
SIZE = (1100, 700)
METRIC_NAMES = {"acc1": "top-1 accuracy", "acc5": "top-5 accuracy", "mean_per_class_recall": "mean per-class recall"}
MARGIN = {"left": 100, "right": 250, "top": 70, "bottom": 80}


def records_of(payload: dict) -> list:
    """The result records of one evaluate JSON: a sweep's rows, or the single result."""
    return list(payload["sweep"]) if "sweep" in payload else [payload]


def point_label(record: dict) -> str:
    """How a point is named on the plot: the schedule as typed in a sweep, else its keep counts or r."""
    reduction = record.get("reduction") or {}
    if reduction.get("prunes_at_eval") is False:
        return ""  # the unpruned model: the `none` point says it, and a name there would cover others
    if record.get("keep_ratios_typed"):
        typed = record["keep_ratios_typed"]
        return f"r={typed}" if reduction.get("r") is not None else typed
    if reduction.get("keep"):
        return "keep " + ",".join(str(k) for k in reduction["keep"])
    return ""


def curves(payloads: Sequence[dict], metric: str = "acc1") -> tuple[dict, dict]:
    """({method: [(flops per image, metric, label), ...] in order of FLOPs}, {model, dataset, split, task}).

    Every record must come from one model, dataset, split and task (a picture mixing them would mislead) and
    carry FLOPs and the metric; ValueError (one line) otherwise. A method's curve keeps its unpruned points
    (keep ratio 1.0, r = 0): they are where its curve starts."""
    found: dict = {}
    about: Optional[dict] = None
    for payload in payloads:
        for record in records_of(payload):
            this = {k: record.get(k) for k in ("model", "dataset", "split", "task")}
            this["dataset"] = canonical_name(this["dataset"])  # `builtin` and `elip_shapes` are one dataset
            if about is None:
                about = this
            elif this != about:
                key = next(k for k in this if this[k] != about[k])
                raise ValueError(f"the results must come from one {key}: found {about[key]!r} and {this[key]!r}")
            value = (record.get("metrics") or {}).get(metric)
            flops = record.get("flops_per_image")
            if value is None or flops is None:
                raise ValueError(f"a {this['model']} result has no {'FLOPs per image' if value is not None else metric}"
                                 f" (metrics: {sorted(record.get('metrics') or {})})")
            method = (record.get("reduction") or {}).get("method", "none")
            found.setdefault(method, []).append((float(flops), float(value), point_label(record)))
    if about is None:
        raise ValueError("no results to plot")
    return {m: sorted(points) for m, points in found.items()}, about


def nice_ticks(low: float, high: float, count: int = 6) -> list:
    """Round tick values covering [low, high]: steps of 1, 2, 2.5 or 5 times a power of ten, about `count`."""
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = [round(first, 10)]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(first + len(ticks) * step, 10))
    return ticks


def flops_unit(largest: float) -> tuple[float, str]:
    for scale, name in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"),
                        (1e3, "kFLOP")):
        if largest >= scale:
            return scale, name
    return 1.0, "FLOP"


def draw(found: dict, about: dict, metric: str = "acc1", title: Optional[str] = None) -> bytes:
    """The PNG: one coloured line with markers per method, points labelled with their schedule."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = SIZE
    left, right, top, bottom = MARGIN["left"], width - MARGIN["right"], MARGIN["top"], height - MARGIN["bottom"]
    picture = Image.new("RGB", SIZE, "white")
    canvas = ImageDraw.Draw(picture)
    font, small, big = (ImageFont.load_default(s) for s in (16, 12, 20))
    xs = [p[0] for points in found.values() for p in points]
    ys = [p[1] * 100 for points in found.values() for p in points]
    scale, unit = flops_unit(max(xs))
    x_ticks = nice_ticks(min(xs) / scale * 0.97, max(xs) / scale * 1.03)
    y_ticks = nice_ticks(min(ys) - 1, max(ys) + 1)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def at(flops, value):
        return (left + (flops / scale - x0) / (x1 - x0) * (right - left),
                bottom - (value * 100 - y0) / (y1 - y0) * (bottom - top))

    for tick in x_ticks:
        x = left + (tick - x0) / (x1 - x0) * (right - left)
        canvas.line([(x, top), (x, bottom)], fill=(232, 232, 232))
        canvas.text((x, bottom + 8), f"{tick:g}", fill="black", font=font, anchor="mt")
    for tick in y_ticks:
        y = bottom - (tick - y0) / (y1 - y0) * (bottom - top)
        canvas.line([(left, y), (right, y)], fill=(232, 232, 232))
        canvas.text((left - 8, y), f"{tick:g}", fill="black", font=font, anchor="rm")
    canvas.rectangle([left, top, right, bottom], outline="black")
    canvas.text(((left + right) / 2, height - 22), f"XLA FLOPs per image ({unit}, image encoder)", fill="black",
                font=font, anchor="mm")
    label = Image.new("RGB", (bottom - top, 24), "white")
    ImageDraw.Draw(label).text(((bottom - top) / 2, 12), f"zero-shot {METRIC_NAMES.get(metric, metric)} (%)",
                               fill="black", font=font, anchor="mm")
    picture.paste(label.rotate(90, expand=True), (24, top))
    heading = title or (f"Accuracy against FLOPs: {about['model']} on {about['dataset']} ({about['split']} split)")
    canvas.text((width / 2, 30), heading, fill="black", font=big, anchor="mm")

    colours = {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(found)}
    # single points (the unpruned model) last and larger, so that the curves starting there do not hide them
    order = sorted(found, key=lambda method: len(found[method]) == 1)
    labels = []  # drawn after every line, on white, so that no curve crosses a point's name
    for method in order:
        points, colour = found[method], colours[method]
        where = [at(f, v) for f, v, _ in points]
        radius = 5 if len(points) > 1 else 8
        if len(where) > 1:
            canvas.line(where, fill=colour, width=3)
        for (x, y), (_, _, name) in zip(where, points):
            canvas.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline="black")
            if name:
                labels.append(((x + 7, y - 7), name, colour))
    for where, name, colour in labels:
        box = canvas.textbbox(where, name, font=small, anchor="ld")
        canvas.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill="white")
        canvas.text(where, name, fill=colour, font=small, anchor="ld")
    for i, (method, points) in enumerate(found.items()):
        legend_y = top + 10 + 28 * i
        canvas.line([(right + 20, legend_y), (right + 50, legend_y)], fill=colours[method], width=3)
        canvas.ellipse([right + 30, legend_y - 5, right + 40, legend_y + 5], fill=colours[method], outline="black")
        canvas.text((right + 58, legend_y), f"{method} ({len(points)} point{'s' * (len(points) > 1)})",
                    fill="black", font=font, anchor="lm")
    canvas.text((right + 20, top + 20 + 28 * len(found)), "points: the schedule\n(keep ratios, or ToMe's r)",
                fill=(90, 90, 90), font=small, anchor="la")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def build_parser():
    p = ArgumentParser(prog="python -m elip_jax.evaluate.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSON files written by python -m elip_jax.evaluate (sweeps or single)")
    p.add_argument("--output", required=True, help="the PNG to write")
    p.add_argument("--metric", default="acc1", help="the metric on the vertical axis (default acc1)")
    p.add_argument("--title", default=None, help="replaces the default title (model, dataset, split)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from elip_jax.fileio import atomic_write_bytes
    args = build_parser().parse_args(argv)
    check_output_file(args.output, "--output", suffix=".png")
    payloads = []
    for path in args.results:
        try:
            with open(path) as f:
                payloads.append(json.load(f))
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"{path} cannot be read as an evaluate result ({type(error).__name__}: {error})") from None
    found, about = curves(payloads, args.metric)
    atomic_write_bytes(args.output, draw(found, about, args.metric, args.title))
    print(f"wrote {args.output}: {', '.join(f'{m} ({len(p)} points)' for m, p in found.items())}")
    return {"curves": found, "about": about}


def run(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(main, argv)


if __name__ == "__main__":
    raise SystemExit(run())
