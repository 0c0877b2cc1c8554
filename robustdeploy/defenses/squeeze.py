"""Feature squeezing detector (Xu, Evans and Qi, NDSS 2018, arXiv:1704.01155).

score(x) = max over squeezers s of || softmax(f(x)) - softmax(f(s(x))) ||_1, in [0, 2]; flag = score > threshold,
the threshold calibrated on clean validation data at a target false-positive rate (paper: 5%).
Every squeezer uses ops that mean the same in ONNX Runtime as in PyTorch: Round (half-to-even in both),
slices + Sort for the median, integer average pooling + expand/reshape for resampling (no Resize op).
Defaults follow the paper's MNIST detector: 1-bit depth and a 2x2 median filter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustdeploy.defenses.base import DETECTORS
from robustdeploy.errors import RobustDeployError


class BitDepth(nn.Module):
    """Reduce to 2^bits levels: round(x * (2^bits - 1)) / (2^bits - 1), as Xu et al.'s `np.rint` (half-to-even)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise RobustDeployError(f"--squeeze-bits must be in 1..8, got {bits}")
        self.bits, self.levels = bits, float(2**bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class MedianFilter(nn.Module):
    """k x k median filter defined as scipy.ndimage.median_filter(mode="reflect"), which Xu et al. use.

    The window of pixel (i, j) covers rows i - k//2 .. i + (k-1)//2 (for k = 2: the pixel and the one above/left),
    the border is mirrored including the edge pixel, and for even k the upper median (sorted index k*k//2) is taken.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 2:
            raise RobustDeployError(f"--median must be at least 2 (the paper uses 2), got {size}")
        self.size = size

    @staticmethod
    def _mirror(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
        length = x.shape[dim]
        if before > length or after > length:
            raise RobustDeployError(f"median window is larger than the image ({length} pixels)")
        parts = [x.narrow(dim, 0, before).flip(dim), x, x.narrow(dim, length - after, after).flip(dim)]
        return torch.cat([p for p in parts if p.shape[dim]], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, before = self.size, self.size // 2
        padded = self._mirror(self._mirror(x, before, k - 1 - before, 2), before, k - 1 - before, 3)
        h, w = x.shape[2], x.shape[3]
        windows = torch.stack([padded[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)], -1)
        return windows.sort(-1).values[..., (k * k) // 2]


class Resample(nn.Module):
    """Down-scale by an integer factor (mean of each factor x factor block), then up-scale by repetition."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 2:
            raise RobustDeployError(f"--resample factor must be at least 2, got {factor}")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        f = self.factor
        if h % f or w % f:
            raise RobustDeployError(f"--resample {f} needs image sides divisible by {f}, got {h}x{w}")
        small = nn.functional.avg_pool2d(x, f)
        return small[:, :, :, None, :, None].expand(n, c, h // f, f, w // f, f).reshape(n, c, h, w)


@dataclass(frozen=True)
class SqueezeConfig:
    """Which squeezers to use (0 = off) and the calibration target; defaults: the paper's MNIST detector."""

    bits: int = 1
    median: int = 2
    resample: int = 0
    target_fpr: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fpr < 1.0:
            raise RobustDeployError(f"--target-fpr must be in (0, 1), got {self.target_fpr:g}")
        if not (self.bits or self.median or self.resample):
            raise RobustDeployError("the squeeze detector needs at least one squeezer (--squeeze-bits, --median "
                                    "or --resample)")

    def squeezers(self) -> list[nn.Module]:
        return ([BitDepth(self.bits)] if self.bits else []) + ([MedianFilter(self.median)] if self.median else []) \
            + ([Resample(self.resample)] if self.resample else [])

    def to_dict(self) -> dict:
        return asdict(self)


class SqueezeDetector(nn.Module):
    """Classifier + squeezers: pixels -> (logits, score, flag); the graph exported as `detector.onnx`."""

    def __init__(self, classifier: nn.Module, config: SqueezeConfig, threshold: float = 2.0) -> None:
        super().__init__()
        self.classifier, self.config, self.threshold = classifier, config, float(threshold)
        self.squeezers = nn.ModuleList(config.squeezers())

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(x)
        return logits, squeeze_score(logits, torch.stack([self.classifier(s(x)) for s in self.squeezers], 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, score = self.scores(x)
        return logits, score, score > self.threshold


def squeeze_score(logits: torch.Tensor, squeezed: torch.Tensor) -> torch.Tensor:
    """The detector's score from the logits of x (N, C) and of its squeezed views (N, V, C)."""
    return (logits.softmax(1)[:, None] - squeezed.softmax(2)).abs().sum(2).amax(1)


def calibrate(scores: torch.Tensor, target_fpr: float) -> tuple[float, float]:
    """Smallest threshold t with mean(scores > t) <= target_fpr on clean data; returns (t, measured FPR)."""
    ordered = scores.sort().values
    k = math.ceil((1.0 - target_fpr) * len(ordered))
    threshold = float(ordered[max(k, 1) - 1])
    return threshold, float((scores > threshold).float().mean())


@torch.no_grad()
def detector_scores(detector: SqueezeDetector, x: torch.Tensor, batch_size: int = 256
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [detector.scores(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@DETECTORS.register("squeeze")
def build_squeeze(classifier: nn.Module, validation_x: torch.Tensor, config: SqueezeConfig | None = None
                  ) -> tuple[SqueezeDetector, float]:
    """A feature-squeezing detector calibrated on clean validation pixels; returns (detector, measured FPR)."""
    config = config or SqueezeConfig()
    detector = SqueezeDetector(classifier.eval(), config)
    threshold, fpr = calibrate(detector_scores(detector, validation_x)[1], config.target_fpr)
    detector.threshold = threshold
    return detector, fpr
