"""What tells poisoned images from clean ones while the generator trains; the generator is rewarded for fooling
it. The seed's (`features-head`, its GAN.ipynb) is a fake/real head on the frozen surrogates' features, whose
loss the generator maximises; `pixels` is the first round's small convolutional critic on the images."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy.poison.objectives import FeatureHeads, Views, mean_ce
from robustdeploy.registry import Registry

DETECTORS: Registry[nn.Module] = Registry("poison detector")


@DETECTORS.register("features-head")
class FeatureHeadDetector(nn.Module):
    """Fake/real head (class 1 = poisoned) on each surrogate's features; the generator's term is minus its loss on
    the poisoned images, as in the seed."""

    def __init__(self, channels: int, dims: list[int]) -> None:
        super().__init__()
        self.heads = FeatureHeads(dims, 2)

    def fit_loss(self, v: Views) -> torch.Tensor:
        real = torch.zeros_like(v.y)
        return mean_ce(self.heads(v.clean_features), real) + mean_ce(self.heads(v.poisoned_features), real + 1)

    def evade(self, v: Views) -> torch.Tensor:
        return -mean_ce(self.heads(v.poisoned_features), torch.ones_like(v.y))


@DETECTORS.register("pixels")
class PixelCritic(nn.Module):
    """Image -> logit of 'poisoned' (two strided convolutions and a linear layer); the generator's term is the
    critic's loss for calling its images clean."""

    def __init__(self, channels: int, dims: list[int], width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))

    def _logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def fit_loss(self, v: Views) -> torch.Tensor:
        real, fake = self._logit(v.clean), self._logit(v.poisoned)
        return F.binary_cross_entropy_with_logits(real, torch.zeros_like(real)) + \
            F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))

    def evade(self, v: Views) -> torch.Tensor:
        seen = self._logit(v.poisoned)
        return F.binary_cross_entropy_with_logits(seen, torch.zeros_like(seen))
