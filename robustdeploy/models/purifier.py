"""Purifier networks (seed 003): image -> reconstructed image, trained on clean images to undo perturbations.

Each purifier knows its own training objective (`loss(x)`, per batch), so the purify recipe trains any of them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy.errors import RobustDeployError
from robustdeploy.models.base import PURIFIERS


@PURIFIERS.register("conv-ae")
class ConvAutoencoder(nn.Module):
    """conv 32 -> pool /2 -> conv 8 (bottleneck) -> nearest x2 -> conv 32 -> conv C -> sigmoid."""

    objective = "mse"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(x), x)


@PURIFIERS.register("conv-vae")
class ConvVAE(nn.Module):
    """Convolutional variational autoencoder (Kingma & Welling, ICLR 2014, arXiv:1312.6114), seed 003's purifier.

    conv 32 -> pool /2 -> conv 32, then two 1x1 heads: mu and log-variance of a `latent`-channel map at half
    resolution; z = mu + sigma * N(0, 1) (reparameterised); decoder as conv-ae's. Trained on the negative ELBO
    (pixel-wise Bernoulli reconstruction + `beta` times the KL to N(0, I); Higgins et al., ICLR 2017). The
    default beta = 0.01: on 8x8 digits the 64-value latent's KL outweighs a 64-pixel reconstruction term, and
    at beta = 1 the z = mu reconstructions lose the digit (23.7% clean behind `cnn`; 94.1% at 0.01). At
    inference z = mu (`sample` False, the default), so the deployed graph is deterministic and exports to ONNX;
    `sample` True draws z, which the adaptive attack averages over (EOT, `defenses.purify.SampledGradients`).
    """

    objective = "elbo"

    def __init__(self, channels: int, latent: int = 4, beta: float = 0.01) -> None:
        super().__init__()
        if beta <= 0:
            raise RobustDeployError(f"--beta (the conv-vae's KL weight) must be positive, got {beta:g}")
        self.sample, self.beta = False, beta
        self.encoder = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.mu, self.logvar = nn.Conv2d(32, latent, 1), nn.Conv2d(32, latent, 1)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(latent, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, channels, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sample:
            return torch.sigmoid(self.decoder(self.mu(self.encoder(x))))
        mu, logvar = self.encode(x)
        return torch.sigmoid(self.decoder(mu + torch.randn_like(mu) * (0.5 * logvar).exp()))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative (beta-weighted) ELBO per image, averaged over the batch (a reparameterised sample of z)."""
        mu, logvar = self.encode(x)
        logits = self.decoder(mu + torch.randn_like(mu) * (0.5 * logvar).exp())
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (reconstruction + self.beta * kl) / len(x)
