"""Purifier networks (seed 003): image -> reconstructed image, trained to undo perturbations."""

from __future__ import annotations

from torch import nn

from robustdeploy.models.base import PURIFIERS


@PURIFIERS.register("conv-ae")
class ConvAutoencoder(nn.Module):
    """conv 32 -> pool /2 -> conv 8 (bottleneck) -> nearest x2 -> conv 32 -> conv C -> sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))
