"""What the generator maximises, on the frozen surrogates' features of clean and poisoned images. The seed's
objective (`head`, its GAN.ipynb) trains a classification head on the surrogates' features alongside the
generator, which maximises that head's loss on poisoned images; `features` and `predictions` need no training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy.errors import RobustDeployError
from robustdeploy.models.parts import head
from robustdeploy.registry import Registry

OBJECTIVES: Registry[nn.Module] = Registry("poison objective")


@dataclass(frozen=True)
class Views:
    """One batch as the adversaries see it: pixels and each surrogate's features (lists follow the surrogates)."""

    clean: torch.Tensor
    poisoned: torch.Tensor
    y: torch.Tensor
    clean_features: list[torch.Tensor]
    poisoned_features: list[torch.Tensor]

    def detached(self) -> Views:
        """For the heads' own step: no gradient reaches the generator."""
        return Views(self.clean, self.poisoned.detach(), self.y, self.clean_features,
                     [f.detach() for f in self.poisoned_features])


class FeatureHeads(nn.Module):
    """Per surrogate Linear(D, hidden) + ReLU, then one shared Linear(hidden, outputs) (the seed's Decoder)."""

    def __init__(self, dims: list[int], outputs: int, hidden: int = 128) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.out(F.relu(trunk(f))) for trunk, f in zip(self.trunks, features)]


def mean_ce(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return torch.stack([F.cross_entropy(z, y) for z in logits]).mean()


@OBJECTIVES.register("head")
class HeadObjective(nn.Module):
    """The seed's: a classification head learns the labels from clean and poisoned features; the generator
    maximises its cross-entropy on the poisoned ones."""

    def __init__(self, surrogates: list, dims: list[int], classes: int) -> None:
        super().__init__()
        self.heads = FeatureHeads(dims, classes)

    def fit_loss(self, v: Views) -> torch.Tensor:
        return mean_ce(self.heads(v.clean_features), v.y) + mean_ce(self.heads(v.poisoned_features), v.y)

    def push(self, v: Views) -> torch.Tensor:
        return mean_ce(self.heads(v.poisoned_features), v.y)


@OBJECTIVES.register("features")
class FeatureDistance(nn.Module):
    """Distance of features, relative to the clean features' norm (so surrogates weigh alike)."""

    def __init__(self, surrogates: list, dims: list[int], classes: int) -> None:
        super().__init__()

    def fit_loss(self, v: Views) -> None:
        return None

    def push(self, v: Views) -> torch.Tensor:
        return torch.stack([(p - c).norm(dim=1).div(c.norm(dim=1).clamp_min(1e-6)).mean()
                            for c, p in zip(v.clean_features, v.poisoned_features)]).mean()


@OBJECTIVES.register("predictions")
class PredictionLoss(nn.Module):
    """Cross-entropy of the true label through each surrogate classifier's own last layer (error-maximising)."""

    def __init__(self, surrogates: list, dims: list[int], classes: int) -> None:
        super().__init__()
        if any(s.is_backbone for s in surrogates):
            raise RobustDeployError("--objective predictions needs classifier surrogates; a pretrained backbone has "
                                    "no head: use --objective head or features")
        self.layers = [head(s.model) for s in surrogates]  # frozen with their surrogates, not trained here

    def fit_loss(self, v: Views) -> None:
        return None

    def push(self, v: Views) -> torch.Tensor:
        return mean_ce([layer(f) for layer, f in zip(self.layers, v.poisoned_features)], v.y)
