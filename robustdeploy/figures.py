"""A PNG of a few adversarial examples: original, amplified perturbation, adversarial, predictions per runtime.

Drawn with Pillow only, in the layout of seed 001's attack figures (one row per example).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from robustdeploy.io import atomic_write_bytes

CELL = 96  # pixels per image cell
LINE = 12  # pixels per caption line


def _tile(image: torch.Tensor) -> Image.Image:
    """(C, H, W) in [0, 1] -> a CELL x CELL RGB tile, nearest-neighbour so pixels stay visible."""
    array = (image.clamp(0, 1) * 255).round().byte()
    array = array.expand(3, -1, -1) if array.shape[0] == 1 else array[:3]
    return Image.fromarray(array.permute(1, 2, 0).contiguous().numpy(), "RGB").resize((CELL, CELL), Image.NEAREST)


def example_figure(path: Path, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor,
                   predictions: dict[str, tuple[torch.Tensor, torch.Tensor]], title: str) -> Path:
    """Write `path` (PNG): per row x, |adv - x| amplified to the full range, adv, and under each image the
    true label and every runtime's clean -> adversarial prediction (`predictions[label] = (clean, adv)`)."""
    font = ImageFont.load_default()
    caption = LINE * (len(predictions) + 1) + 4
    width, height = 3 * (CELL + 8) + 8, LINE + 8 + len(x) * (CELL + caption + 8)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill="black", font=font)
    for row in range(len(x)):
        delta = adv[row] - x[row]
        scale = float(delta.abs().max()) or 1.0
        top = LINE + 8 + row * (CELL + caption + 8)
        for col, (name, image) in enumerate((("original", x[row]), ("perturbation", 0.5 + delta / (2 * scale)),
                                             ("adversarial", adv[row]))):
            left = 8 + col * (CELL + 8)
            canvas.paste(_tile(image), (left, top))
            text = f"{name} (x{0.5 / scale:.1f})" if name == "perturbation" else f"{name}, true {int(y[row])}"
            draw.text((left, top + CELL + 2), text, fill="black", font=font)
        for line, (runtime, (clean, attacked)) in enumerate(predictions.items(), start=1):
            fooled = int(attacked[row]) != int(y[row])
            draw.text((8, top + CELL + 2 + LINE * line),
                      f"{runtime}: {int(clean[row])} -> {int(attacked[row])}{'  fooled' if fooled else ''}",
                      fill="firebrick" if fooled else "black", font=font)
    return write_png(canvas, path)


def write_png(image: Image.Image, path: Path) -> Path:
    """`image` as a PNG at `path`, written atomically."""
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def pick_examples(x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, adv_pred: torch.Tensor,
                  count: int = 4) -> torch.Tensor:
    """Indices of up to `count` samples the attack changed and that fool, then changed ones, then any."""
    changed = (adv != x).flatten(1).any(1)
    fooled = (changed & (adv_pred != y)).nonzero().flatten()
    rest = (changed & (adv_pred == y)).nonzero().flatten()
    return torch.cat([fooled, rest, (~changed).nonzero().flatten()])[:count]
