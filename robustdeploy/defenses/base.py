"""Defense registries and what a training-side defense returns.

DEFENSES: training recipes (`train --defense`, standard training is `none`); DETECTORS: input detectors
(`export --detector`); TRANSFORMS: input transformations placed in front of a classifier (`patch --lgs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from robustdeploy.models import ModelSpec
from robustdeploy.registry import Registry

DEFENSES: Registry = Registry("defense")
DETECTORS: Registry = Registry("detector")
TRANSFORMS: Registry = Registry("input transformation")


@dataclass
class Trained:
    """The deployed graph (pixels in [0, 1] -> logits), its spec, the last training losses and defense facts."""

    model: nn.Module
    spec: ModelSpec
    losses: list[float]
    info: dict = field(default_factory=dict)
