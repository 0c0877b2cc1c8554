"""Perturbation generators: image -> delta with |delta| < eps everywhere (eps * tanh). The seed's UNet++ (Zhou et
al. 2018, "UNet++: A Nested U-Net Architecture", as monai's BasicUNetPlusPlus in the seed's GAN.ipynb) is the
default; the two-level U-Net (Ronneberger et al. 2015) of the first round is kept as `unet`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy.registry import Registry

GENERATORS: Registry[nn.Module] = Registry("poison generator")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, ceil_mode=True)


@GENERATORS.register("unet")
class UNetGenerator(nn.Module):
    """Image -> perturbation eps * tanh(.): two encoder levels, a bottleneck, a decoder with skip connections."""

    def __init__(self, channels: int, eps: float, width: int = 16) -> None:
        super().__init__()
        self.eps = eps
        self.enc1, self.enc2 = _block(channels, width), _block(width, 2 * width)
        self.bottleneck = _block(2 * width, 4 * width)
        self.dec2, self.dec1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(_down(e1))
        b = self.bottleneck(_down(e2))
        d2 = self.dec2(torch.cat([_up(b, e2), e2], 1))
        d1 = self.dec1(torch.cat([_up(d2, e1), e1], 1))
        return self.eps * torch.tanh(self.out(d1))


@GENERATORS.register("unet++")
class UNetPlusPlus(nn.Module):
    """Image -> perturbation eps * tanh(.) through UNet++'s nested dense skip pathways: node X[i][j] (level i,
    column j) convolves X[i][0..j-1] with the upsampled X[i+1][j-1]; the output is read from X[0][depth-1]
    (no deep supervision, as the seed reads output 0)."""

    def __init__(self, channels: int, eps: float, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.eps, self.depth = eps, depth
        widths = [width * 2 ** i for i in range(depth)]
        self.nodes = nn.ModuleDict()
        for i in range(depth):
            self.nodes[f"{i}_0"] = _block(channels if i == 0 else widths[i - 1], widths[i])
        for j in range(1, depth):
            for i in range(depth - j):
                self.nodes[f"{i}_{j}"] = _block(widths[i] * j + widths[i + 1], widths[i])
        self.out = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(self.depth):
            grid[i, 0] = self.nodes[f"{i}_0"](x if i == 0 else _down(grid[i - 1, 0]))
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                inputs = [grid[i, k] for k in range(j)] + [_up(grid[i + 1, j - 1], grid[i, 0])]
                grid[i, j] = self.nodes[f"{i}_{j}"](torch.cat(inputs, 1))
        return self.eps * torch.tanh(self.out(grid[0, self.depth - 1]))
