"""Defense registries and what a training-side defense returns.

DEFENSES: training recipes (`train --defense`, standard training is `none`); DETECTORS: input detectors
(`export --detector`); TRANSFORMS: input transformations placed in front of a classifier (`patch --lgs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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


class _StraightThrough(torch.autograd.Function):
    """transform(x) forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, transform: nn.Module) -> torch.Tensor:  # type: ignore[override]
        return transform(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def straight_through(x: torch.Tensor, transform: nn.Module) -> torch.Tensor:
    """`transform(x)` exactly, with the identity as its gradient (BPDA, Athalye et al., ICML 2018): how an adaptive
    attacker differentiates through a transform that has no useful gradient (bit-depth reduction, median filter,
    LGS's clamp)."""
    return _StraightThrough.apply(x, transform)


class Bpda(nn.Module):
    """`straight_through` as a module, to put in front of a classifier (`patch --lgs`'s adaptive patch)."""

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return straight_through(x, self.transform)
