"""What the generator pushes away from the clean image: each surrogate's features or its predictions."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from robustdeploy.models.parts import penultimate
from robustdeploy.registry import Registry

OBJECTIVES: Registry = Registry("poison objective")


@OBJECTIVES.register("features")
def feature_distance(model, clean: torch.Tensor, poisoned: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Distance of penultimate features, relative to the clean features' norm (so surrogates weigh alike)."""
    with torch.no_grad():
        reference = penultimate(model, clean)
    moved = penultimate(model, poisoned)
    return (moved - reference).norm(dim=1).div(reference.norm(dim=1).clamp_min(1e-6)).mean()


@OBJECTIVES.register("predictions")
def prediction_loss(model, clean: torch.Tensor, poisoned: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true label on the poisoned image (error-maximising)."""
    return F.cross_entropy(model(poisoned), y)
