"""What a training-side defense returns to `train.train`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from robustdeploy.models import ModelSpec


@dataclass
class Trained:
    """The deployed graph (pixels in [0, 1] -> logits), its spec, the last training losses and defense facts."""

    model: nn.Module
    spec: ModelSpec
    losses: list[float]
    info: dict = field(default_factory=dict)
