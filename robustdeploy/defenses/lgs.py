"""Local Gradient Smoothing (Naseer et al., WACV 2019, arXiv:1807.01216) against localized adversarial patches.

The normalised first-order gradient magnitude g of the image is kept only inside windows whose mean
exceeds `threshold` (a patch is a high-frequency, high-gradient region); the image is then damped there:
x' = x * (1 - smoothing * g), clipped to [0, 1]. Defaults follow the paper (window 15, stride 5,
threshold 0.1, smoothing 2.3 on 299-pixel ImageNet images); `LocalGradientSmoothing.for_size` scales the
window and stride to smaller images and refuses images under MIN_SIZE pixels. Why: g is normalised per image,
so on a small image of strokes (digits) every stroke edge has g near 1 and is erased as if it were a patch,
whatever the window and threshold. Measured on a `cnn` on the built-in digits (270 test images): clean accuracy
96.7% -> 22.6% at 28 px with the scaled window (2, stride 1), and no window/threshold tried (windows up to half
the image, thresholds 0.1-0.5) kept it above 65% (16 px: 94.8% -> at best 77.8%). Only conv/pool/elementwise ops,
so LGS + classifier exports to ONNX. `defenses.base.Bpda(lgs)` is the adaptive attacker's view of it (Chiang et
al., ICLR 2020, broke LGS this way): LGS forward, identity backward, since its clamp zeroes the gradient of every
strongly damped pixel, which are the patch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustdeploy.defenses.base import TRANSFORMS
from robustdeploy.errors import RobustDeployError

PAPER_IMAGE_SIZE = 299
MIN_SIZE = 32  # below this LGS destroys clean images (see the module docstring)


@TRANSFORMS.register("lgs")
class LocalGradientSmoothing(nn.Module):
    """Pixels in [0, 1] (NCHW) -> pixels in [0, 1] with high-gradient windows smoothed."""

    def __init__(self, window: int = 15, stride: int = 5, threshold: float = 0.1, smoothing: float = 2.3) -> None:
        super().__init__()
        if window < 1 or stride < 1 or not 0.0 <= threshold <= 1.0 or smoothing < 0:
            raise RobustDeployError("LGS needs window >= 1, stride >= 1, threshold in [0, 1], smoothing >= 0")
        self.window, self.stride, self.threshold, self.smoothing = window, stride, threshold, smoothing
        self.register_buffer("ones", torch.ones(1, 1, window, window))

    @classmethod
    def for_size(cls, size: int, threshold: float = 0.1, smoothing: float = 2.3) -> LocalGradientSmoothing:
        """The paper's window/stride scaled from 299 pixels to `size` (at least 2 and 1); refused below MIN_SIZE."""
        if size < MIN_SIZE:
            raise RobustDeployError(f"LGS needs images of at least {MIN_SIZE} px, got {size} px: on small images it "
                                    "erases every stroke edge as if it were a patch (digits at 28 px: clean accuracy "
                                    "96.7% -> 22.6%); drop --lgs or use larger images")
        scale = size / PAPER_IMAGE_SIZE
        return cls(max(2, round(15 * scale)), max(1, round(5 * scale)), threshold, smoothing)

    def gradient_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (per image, to [0, 1]) first-order gradient magnitude of the channel mean."""
        grey = x.mean(1, keepdim=True)
        gx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0))
        gy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))
        mag = torch.sqrt(gx * gx + gy * gy + 1e-12)
        low = mag.amin(dim=(2, 3), keepdim=True)
        high = mag.amax(dim=(2, 3), keepdim=True)
        return (mag - low) / (high - low + 1e-12)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """g inside the windows whose mean gradient exceeds the threshold, 0 elsewhere."""
        g = self.gradient_magnitude(x)
        h, w = x.shape[-2:]
        kept = (F.avg_pool2d(g, self.window, self.stride, ceil_mode=False) > self.threshold).to(x.dtype)
        cover = F.conv_transpose2d(kept, self.ones, stride=self.stride)
        cover = F.pad(cover, (0, max(0, w - cover.shape[-1]), 0, max(0, h - cover.shape[-2])))[..., :h, :w]
        return g * (cover > 0).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (1.0 - self.smoothing * self.mask(x))).clamp(0.0, 1.0)

