"""A PNG of a few adversarial examples: original, amplified perturbation, adversarial, predictions per runtime.

The example figure is drawn with Pillow in the layout of seed 001's attack figures (one row per example); the
report's plots (budget curves, detector scores, example grids, latency distributions) with matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
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
                   predictions: dict[str, tuple[torch.Tensor, torch.Tensor]], title: str,
                   names: tuple[str, str, str] = ("original", "perturbation", "adversarial")) -> Path:
    """Write `path` (PNG): per row x, |adv - x| amplified to the full range, adv (columns captioned `names`), and
    under each image the true label and every runtime's clean -> adversarial prediction (`predictions[label] =
    (clean, adv)`)."""
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
        for col, image in enumerate((x[row], 0.5 + delta / (2 * scale), adv[row])):
            left = 8 + col * (CELL + 8)
            canvas.paste(_tile(image), (left, top))
            text = f"{names[col]} (x{0.5 / scale:.1f})" if col == 1 else f"{names[col]}, true {int(y[row])}"
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
                  count: int = 4, first: Sequence[int] = ()) -> torch.Tensor:
    """Indices of up to `count` samples: `first` (those whose outcome differs between runtimes), then samples the
    attack changed and that fool, then changed ones, then any."""
    changed = (adv != x).flatten(1).any(1)
    preferred = torch.zeros_like(changed)
    preferred[[i for i in first if i < len(x)]] = True
    fooled = (changed & (adv_pred != y) & ~preferred).nonzero().flatten()
    rest = (changed & (adv_pred == y) & ~preferred).nonzero().flatten()
    return torch.cat([preferred.nonzero().flatten(), fooled, rest, (~changed & ~preferred).nonzero().flatten()])[:count]


def _matplotlib():
    """pyplot on the file-only Agg backend (no display needed), imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    plt = _matplotlib()
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def accuracy_curves(curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str) -> bytes:
    """Accuracy (%) against x (a budget, a poison rate), one line per series (`curves[label] = [(x, acc), ...]`)."""
    plt = _matplotlib()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for index, (label, points) in enumerate(curves.items()):
        xs, accuracy = zip(*sorted(points))
        axis.plot(xs, accuracy, label=label, **line_style(index, len(curves)))
    axis.set(xlabel=xlabel, ylabel=ylabel, ylim=(-2, 102), title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return png_bytes(figure)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", ":", "-.")


def line_style(index: int, lines: int) -> dict:
    """A marker, dash and size of its own per line, hollow and shrinking in drawing order, so lines that coincide
    (a deployment identical to PyTorch) stay visible as nested markers and interleaved dashes."""
    return {"marker": MARKERS[index % len(MARKERS)], "linestyle": DASHES[index % len(DASHES)],
            "markersize": 5 + 3 * (lines - 1 - index), "markerfacecolor": "none", "markeredgewidth": 2,
            "linewidth": 1.6 + 0.8 * (lines - 1 - index)}


def score_figure(clean: torch.Tensor, adversarial: torch.Tensor, threshold: float, title: str) -> bytes:
    """Detector scores of clean and of successful adversarial samples (histograms), and the ROC curve."""
    plt = _matplotlib()
    figure, (hist, roc) = plt.subplots(1, 2, figsize=(9, 3.4))
    top = float(torch.cat([clean, adversarial]).max()) if len(clean) + len(adversarial) else 1.0
    bins = torch.linspace(0, max(top, threshold) * 1.05 or 1.0, 31).tolist()
    hist.hist(clean.tolist(), bins=bins, alpha=0.6, label=f"clean ({len(clean)})")
    hist.hist(adversarial.tolist(), bins=bins, alpha=0.6, label=f"adversarial, fooling ({len(adversarial)})")
    hist.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    hist.set(xlabel="detector score", ylabel="samples", title=title)
    hist.legend(fontsize=8)
    cuts = torch.cat([torch.tensor([float("inf")]), torch.cat([clean, adversarial]).sort(descending=True).values])
    fpr = [float((clean >= t).double().mean()) if len(clean) else 0.0 for t in cuts]
    tpr = [float((adversarial >= t).double().mean()) if len(adversarial) else 0.0 for t in cuts]
    roc.plot(fpr, tpr, marker=".")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="false-positive rate", ylabel="detection rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    return png_bytes(figure)


def example_grid(x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, title: str) -> bytes:
    """Clean / amplified perturbation / adversarial per row, for results that kept no figure of their own."""
    plt = _matplotlib()
    figure, axes = plt.subplots(len(x), 3, figsize=(4.5, 1.6 * len(x)), squeeze=False)
    for row in range(len(x)):
        delta = adv[row] - x[row]
        scale = float(delta.abs().max()) or 1.0
        for col, (name, image) in enumerate((("clean", x[row]), ("perturbation", 0.5 + delta / (2 * scale)),
                                             ("adversarial", adv[row]))):
            shown = image.clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
            axes[row][col].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
            axes[row][col].set_title(f"{name}, true {int(y[row])}" if col != 1 else name, fontsize=7)
            axes[row][col].axis("off")
    figure.suptitle(title, fontsize=8)
    return png_bytes(figure)


def latency_figure(panels: dict[str, dict[str, list[float]]], title: str) -> bytes:
    """Latency distributions: one panel per batch size (`panels[name][runtime] = [ms, ...]`), a horizontal box
    per runtime (whiskers at the 1st and 99th percentiles) over every timed run drawn as a dot, on a log axis
    (runtimes differ by orders of magnitude, and so do a run and a stall)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _matplotlib()
    labels = list(dict.fromkeys(k for series in panels.values() for k in series))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1, 1.2 + 0.55 * len(labels)),
                                squeeze=False, sharey=True, layout="constrained")
    for axis, (name, series) in zip(axes[0], panels.items()):
        rows = [row for row, label in enumerate(labels, start=1) if label in series]
        axis.boxplot([series[labels[row - 1]] for row in rows], positions=rows, vert=False, whis=(1, 99),
                     showfliers=False, widths=0.6, medianprops={"color": "firebrick"})
        for row in rows:
            values = series[labels[row - 1]]
            jitter = (torch.rand(len(values), generator=torch.Generator().manual_seed(row)) - 0.5) * 0.35
            axis.scatter(values, (row + jitter).tolist(), s=4, alpha=0.35, color="steelblue")
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=8))  # labelled 1-2-5, never crowded
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.tick_params(axis="x", labelsize=8, labelrotation=30)
        axis.set(xlabel="latency per call (ms, log scale)", title=f"{title}, {name}")
        axis.grid(alpha=0.3, axis="x", which="both")
    axes[0][0].set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    return png_bytes(figure)
