"""The seed's perturbation generator (a small U-Net, Ronneberger et al. 2015 / Zhou et al. 2018) and the
discriminator that tells poisoned from clean images."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class UNetGenerator(nn.Module):
    """Image -> perturbation eps * tanh(.): two encoder levels, a bottleneck, a decoder with skip connections.

    The output is bounded by construction: |delta| < eps everywhere."""

    def __init__(self, channels: int, eps: float, width: int = 16) -> None:
        super().__init__()
        self.eps = eps
        self.enc1, self.enc2 = _block(channels, width), _block(width, 2 * width)
        self.bottleneck = _block(2 * width, 4 * width)
        self.dec2, self.dec1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.avg_pool2d(e1, 2, ceil_mode=True))
        b = self.bottleneck(F.avg_pool2d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([F.interpolate(b, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        return self.eps * torch.tanh(self.out(d1))


class Discriminator(nn.Module):
    """Image -> logit of 'poisoned' (two strided convolutions and a linear layer)."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
