"""The study's pictures, drawn with PIL (no plotting library in the runtime): accuracy against training FLOPs
(one point per method and regime, error bars one standard deviation over seeds) and the training-loss curves
(mean over seeds per method; equal steps against the step, every regime against training FLOPs)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from elip_jax.evaluate.plot import flops_unit, nice_ticks  # one way to choose ticks and FLOP units
from elip_jax.fileio import atomic_write_bytes

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
MARKERS = {"equal_steps": "circle", "equal_flops": "square", "equal_time": "triangle"}
STYLES = {"equal_steps": "solid", "equal_flops": "dashed", "equal_time": "dotted"}
DASHES = {"dashed": (9.0, 5.0), "dotted": (2.5, 4.0)}
REGIME_LABELS = {"equal_steps": "equal steps", "equal_flops": "largest batch, equal FLOPs",
                 "equal_time": "largest batch, equal time"}


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size)


def tick_text(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


class Chart:
    """Axes with ticks, a title and a legend beside the plot; data coordinates mapped to pixels."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str,
                 size=(1000, 620), legend_width: int = 270):
        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.top = 90, 60
        self.right, self.bottom = size[0] - legend_width, size[1] - 70
        self.xticks = nice_ticks(min(xs), max(xs))
        self.yticks = nice_ticks(min(ys), max(ys))
        self.legend_x, self.legend_y = self.right + 20, self.top
        d, f = self.draw, font(15)
        d.text(((self.left + self.right) / 2, 25), title, fill="black", font=font(18), anchor="mm")
        d.rectangle([self.left, self.top, self.right, self.bottom], outline="black")
        for x in self.xticks:
            px = self.px(x)
            d.line([px, self.top, px, self.bottom], fill=(230, 230, 230))
            d.text((px, self.bottom + 8), tick_text(x), fill="black", font=f, anchor="mt")
        for y in self.yticks:
            py = self.py(y)
            d.line([self.left, py, self.right, py], fill=(230, 230, 230))
            d.text((self.left - 8, py), tick_text(y), fill="black", font=f, anchor="rm")
        d.rectangle([self.left, self.top, self.right, self.bottom], outline="black")
        d.text(((self.left + self.right) / 2, self.bottom + 40), xlabel, fill="black", font=font(16), anchor="mt")
        label = Image.new("RGB", (self.bottom - self.top, 24), "white")
        ImageDraw.Draw(label).text(((self.bottom - self.top) / 2, 12), ylabel, fill="black", font=font(16),
                                   anchor="mm")
        self.image.paste(label.rotate(90, expand=True), (12, self.top))

    def px(self, x: float) -> float:
        lo, hi = self.xticks[0], self.xticks[-1]
        return self.left + (x - lo) / (hi - lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        lo, hi = self.yticks[0], self.yticks[-1]
        return self.bottom - (y - lo) / (hi - lo) * (self.bottom - self.top)

    def marker(self, x: float, y: float, shape: str, color, radius: int = 7):
        d = self.draw
        if shape == "square":
            d.rectangle([x - radius, y - radius, x + radius, y + radius], fill=color, outline="black")
        elif shape == "triangle":
            d.polygon([(x, y - radius - 1), (x - radius, y + radius), (x + radius, y + radius)], fill=color,
                      outline="black")
        else:
            d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline="black")

    def point(self, x: float, y: float, yerr: Optional[float], shape: str, color, dx: float = 0.0):
        """A marker with its error bar, `dx` pixels beside x (points at the same x drawn side by side)."""
        px, py = self.px(x) + dx, self.py(y)
        if yerr:
            top, bottom = self.py(y + yerr), self.py(y - yerr)
            self.draw.line([px, top, px, bottom], fill=color, width=2)
            self.draw.line([px - 6, top, px + 6, top], fill=color, width=2)
            self.draw.line([px - 6, bottom, px + 6, bottom], fill=color, width=2)
        self.marker(px, py, shape, color)

    def line(self, points: Sequence[tuple], color, width: int = 2, style: str = "solid"):
        pixels = [(self.px(x), self.py(y)) for x, y in points]
        self.pixel_line(pixels, color, width, style)

    def pixel_line(self, pixels: Sequence[tuple], color, width: int, style: str):
        if len(pixels) < 2:
            return
        if style == "solid":
            self.draw.line(pixels, fill=color, width=width)
            return
        on, off = DASHES[style]
        phase = 0.0  # distance along the line, so the pattern runs on across the segments
        for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
            length = math.hypot(x1 - x0, y1 - y0)
            t = 0.0
            while t < length:
                position = (phase + t) % (on + off)
                run = (on - position) if position < on else (on + off - position)
                end = min(length, t + run)
                if position < on:
                    a, b = t / length, end / length
                    self.draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                                    (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=color, width=width)
                t = end
            phase += length

    def legend(self, text: str, color, shape: Optional[str] = None, style: str = "solid"):
        x, y = self.legend_x, self.legend_y
        if shape:
            self.marker(x + 10, y + 9, shape, color, radius=6)
        else:
            self.pixel_line([(x, y + 9), (x + 24, y + 9)], color, 3, style)
        self.draw.text((x + 30, y + 9), text, fill="black", font=font(15), anchor="lm")
        self.legend_y += 26

    def note(self, text: str):
        self.draw.text((self.legend_x, self.legend_y + 6), text, fill=(90, 90, 90), font=font(13))
        self.legend_y += 20

    def save(self, path: str):
        import io
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())


def method_colors(methods: Sequence[str]) -> dict:
    return {m: COLORS[i % len(COLORS)] for i, m in enumerate(methods)}


def side_by_side(pixels: Sequence[float], width: float = 12.0, near: Optional[float] = None) -> list[float]:
    """Pixel offsets that spread points less than `near` (default width / 2) apart along x, `width` apart (the
    equal-FLOPs runs share `none`'s x by design), so that no marker or error bar hides another; points farther
    apart stay put, so that a spread point is never drawn far from its FLOPs."""
    near = width / 2 if near is None else near
    offsets = [0.0] * len(pixels)
    order = sorted(range(len(pixels)), key=lambda i: pixels[i])
    cluster = []
    for i in order + [None]:
        if i is not None and (not cluster or pixels[i] - pixels[cluster[-1]] < near):
            cluster.append(i)
            continue
        for k, j in enumerate(cluster):
            offsets[j] = (k - (len(cluster) - 1) / 2) * width
        cluster = [] if i is None else [i]
    return offsets


def accuracy_vs_flops(groups: dict, methods: Sequence[str], path: str, title: str) -> bool:
    """One point per (method, regime) with runs: mean top-1 against mean training FLOPs, error bar one std.
    False (nothing drawn) when no run has both."""
    points = []
    for regime, entries in groups.items():
        for method, g in entries.items():
            if g["acc1"]["mean"] is not None and g["training_flops"]["mean"] and not g.get("alias"):
                points.append((regime, method, g))
    if not points:
        return False
    scale, unit = flops_unit(max(g["training_flops"]["mean"] for _, _, g in points))
    xs = [g["training_flops"]["mean"] / scale for _, _, g in points]
    ys = [100 * (g["acc1"]["mean"] + sign * (g["acc1"]["std"] or 0)) for _, _, g in points for sign in (-1, 1)]
    pad_x = (max(xs) - min(xs)) * 0.08 or max(xs) * 0.05
    pad_y = max(1.0, 0.15 * (max(ys) - min(ys)))  # a point or two never sit on the frame
    ys = [min(ys) - pad_y, max(ys) + pad_y]
    chart = Chart([min(xs) - pad_x, max(xs) + pad_x], ys, title, f"training {unit} (all devices)",
                  "zero-shot top-1 (%)")
    colors = method_colors(methods)
    offsets = side_by_side([chart.px(x) for x in xs])
    for (regime, method, g), dx in zip(points, offsets):
        chart.point(g["training_flops"]["mean"] / scale, 100 * g["acc1"]["mean"],
                    100 * g["acc1"]["std"] if g["acc1"]["std"] else None, MARKERS[regime], colors[method], dx)
    for method in methods:
        if any(m == method for _, m, _ in points):
            chart.legend(method, colors[method], "circle")
    chart.legend_y += 10
    for regime in MARKERS:
        if any(r == regime for r, _, _ in points):
            chart.legend(REGIME_LABELS[regime], (200, 200, 200), MARKERS[regime])
    chart.note("bars: 1 std over seeds")
    if any(offsets):
        chart.note("points at the same FLOPs: side by side")
    chart.save(path)
    return True


def mean_curve(curves: Sequence[Sequence[tuple]]) -> list[tuple]:
    """The mean loss at the steps every curve logged."""
    common = set.intersection(*(set(s for s, _ in c) for c in curves)) if curves else set()
    by_step = [dict(c) for c in curves]
    return [(s, sum(c[s] for c in by_step) / len(by_step)) for s in sorted(common)]


def loss_curves(runs: Sequence[dict], methods: Sequence[str], path: str, title: str) -> bool:
    """Mean training loss over seeds per (method, regime): solid equal steps, against training FLOPs so that the
    large-batch runs (fewer steps) share the axis. False when no run logged a loss."""
    series = {}
    for run in runs:
        result = run.get("result")
        if not result or run.get("same_as") or not result["loss_curve"] or not result["flops_per_step_per_device"]:
            continue
        per_step = result["flops_per_step_per_device"] * result["devices"]
        series.setdefault((run["regime"], run["method"]), []).append(
            [(step * per_step, loss) for step, loss in result["loss_curve"]])
    if not series:
        return False
    curves = {key: mean_curve(value) for key, value in series.items()}
    curves = {key: value for key, value in curves.items() if value}
    if not curves:
        return False
    scale, unit = flops_unit(max(x for c in curves.values() for x, _ in c))
    xs = [x / scale for c in curves.values() for x, _ in c]
    ys = [y for c in curves.values() for _, y in c]
    chart = Chart([0, max(xs)], ys, title, f"training {unit} (all devices)", "training loss (mean over seeds)")
    colors = method_colors(methods)
    for (regime, method), curve in sorted(curves.items()):
        chart.line([(x / scale, y) for x, y in curve], colors[method], 2, STYLES[regime])
    for method in methods:
        if any(m == method for _, m in curves):
            chart.legend(method, colors[method])
    chart.legend_y += 10
    for regime, style in STYLES.items():
        if any(r == regime for r, _ in curves):
            chart.legend(REGIME_LABELS[regime], (120, 120, 120), style=style)
    chart.save(path)
    return True
