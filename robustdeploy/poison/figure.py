"""Poisoning figures, drawn with Pillow like robustdeploy.figures: a clean / perturbation / poisoned grid and a
plot of clean-test accuracy against poison rate."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from robustdeploy.figures import CELL, LINE, _tile, write_png

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def poison_grid(path: Path, clean: torch.Tensor, poisoned: torch.Tensor, title: str) -> Path:
    """One row per image: clean, perturbation amplified to the full range, poisoned."""
    font = ImageFont.load_default()
    width, height = 3 * (CELL + 8) + 8, LINE + 8 + len(clean) * (CELL + LINE + 12)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill="black", font=font)
    for row in range(len(clean)):
        delta = poisoned[row] - clean[row]
        scale = float(delta.abs().max()) or 1.0
        top = LINE + 8 + row * (CELL + LINE + 12)
        for col, (name, image) in enumerate((("clean", clean[row]), (f"delta (x{0.5 / scale:.1f})",
                                              0.5 + delta / (2 * scale)), ("poisoned", poisoned[row]))):
            left = 8 + col * (CELL + 8)
            canvas.paste(_tile(image), (left, top))
            draw.text((left, top + CELL + 2), name, fill="black", font=font)
    return write_png(canvas, path)


def rate_plot(path: Path, rates: list[float], series: dict[str, list[float]], title: str) -> Path:
    """Accuracy (%) against poison rate, one line per series (victim x runtime)."""
    font = ImageFont.load_default()
    w, h, left, top, bottom = 520, 320, 48, 24, 40
    right = 180
    canvas = Image.new("RGB", (w + right, h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 4), title, fill="black", font=font)
    x0, x1, y0, y1 = left, w - 12, h - bottom, top

    def point(rate: float, acc: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * rate, y0 + (y1 - y0) * acc / 100.0

    draw.line([(x0, y0), (x1, y0)], fill="black")
    draw.line([(x0, y0), (x0, y1)], fill="black")
    for tick in (0, 25, 50, 75, 100):
        _, y = point(0, tick)
        draw.text((6, y - 5), f"{tick}%", fill="black", font=font)
        draw.line([(x0, y), (x1, y)], fill="#dddddd")
    for rate in rates:
        x, _ = point(rate, 0)
        draw.text((x - 8, y0 + 6), f"{rate:g}", fill="black", font=font)
    draw.text(((x0 + x1) / 2 - 30, y0 + 22), "poison rate", fill="black", font=font)
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [point(r, a) for r, a in zip(rates, values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((w, top + LINE * i), name, fill=colour, font=font)
    return write_png(canvas, path)
