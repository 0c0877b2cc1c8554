"""Preprocessing as data: how an image file becomes the pixels every runtime receives, recorded in the manifest.

An image is converted to grey or RGB, its shorter side resized to `resize`, centre-cropped to the input size and put
in `channel_order`, giving 8-bit pixels that are scaled to [0, 1]: the space every attack budget is measured in.
Normalisation with `mean`/`std` is either inside the graph (robustdeploy exported it) or `outside`: the user's ONNX
file expects normalised input, and every runtime applies it at its boundary, so budgets stay in pixel units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.memory import MAX_INPUT

PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
NORMALISATION = ("in-graph", "outside")
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocessing:
    """Input size (C, H, W), resize (shorter side, default the larger of H and W) + centre crop, channel order,
    and normalisation (`in-graph`: the graph takes [0, 1] pixels; `outside`: runtimes normalise before the graph)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: int | None = None
    crop: str = "center"
    channel_order: str = "RGB"
    normalisation: str = "in-graph"

    def __post_init__(self) -> None:
        size = tuple(int(d) for d in self.input_size)
        object.__setattr__(self, "input_size", size)
        channels = size[0] if len(size) == 3 else 0
        if len(size) != 3 or not 1 <= channels <= 4 or min(size) < 1:
            raise RobustDeployError(f"--input-size {list(size)} is not C H W with 1 to 4 channels; e.g. 3 224 224")
        if math.prod(size) > MAX_INPUT:
            raise RobustDeployError(f"--input-size {' '.join(map(str, size))} is {math.prod(size):,} values per image, "
                                    f"beyond {MAX_INPUT:,} (a 4-channel 4000x4000 image); give the size the model "
                                    "takes")
        mean = tuple(float(v) for v in self.mean) or (0.0,) * channels
        std = tuple(float(v) for v in self.std) or (1.0,) * channels
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if len(mean) != channels or len(std) != channels:
            raise RobustDeployError(f"--mean/--std give {len(mean)}/{len(std)} values for {channels} input "
                                    f"channels; give one per channel")
        if min(std) <= 0:
            raise RobustDeployError("--std values must be positive")
        if self.resize is not None and self.resize < max(size[1:]):
            raise RobustDeployError(f"--resize {self.resize} is smaller than the input {size[1]}x{size[2]}; "
                                    "resize to at least the input size before the centre crop")
        if self.crop not in ("center", "none"):
            raise RobustDeployError(f"unknown crop {self.crop!r}; use center or none")
        if self.channel_order not in CHANNEL_ORDERS:
            raise RobustDeployError(f"unknown channel order {self.channel_order!r}; use RGB or BGR")
        if self.normalisation not in NORMALISATION:
            raise RobustDeployError(f"unknown normalisation {self.normalisation!r}; use in-graph or outside")

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**{**data, "input_size": tuple(data["input_size"]), "mean": tuple(data.get("mean", ())),
                      "std": tuple(data.get("std", ()))})

    def image(self, image) -> np.ndarray:
        """A PIL image -> uint8 (C, H, W): grey/RGB, shorter side resized, centre-cropped, channel order."""
        from PIL import Image

        c, h, w = self.input_size
        image = image.convert("L" if c == 1 else "RGBA" if c == 4 else "RGB")
        if self.crop == "none":
            image = image.resize((w, h), Image.BILINEAR)
        else:
            side = self.resize or max(h, w)
            scale = side / min(image.size)
            size = (max(w, round(image.size[0] * scale)), max(h, round(image.size[1] * scale)))
            image = image.resize(size, Image.BILINEAR)
            left, top = (size[0] - w) // 2, (size[1] - h) // 2
            image = image.crop((left, top, left + w, top + h))
        arr = np.asarray(image, dtype=np.uint8)
        arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr[::-1] if self.channel_order == "BGR" and c == 3 else arr)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel, on x's device and dtype."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def parse_stats(text: str | None, option: str) -> tuple[float, ...]:
    """`--mean imagenet` or `--mean 0.485,0.456,0.406` (commas or spaces) -> floats; None -> ()."""
    if text is None:
        return ()
    name = text.strip().lower()
    if name in PRESETS:
        return PRESETS[name][0 if option == "--mean" else 1]
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise RobustDeployError(f"{option} {text!r} is not a list of numbers; e.g. {option} 0.485,0.456,0.406 or "
                                f"{option} imagenet") from None

