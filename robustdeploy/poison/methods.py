"""The registry of targeted clean-label poisoning methods and what each returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustdeploy.registry import Registry

TARGETED: Registry = Registry("poisoning method")


@dataclass(frozen=True)
class Crafted:
    """Poisons (float, within eps of their bases, in [0, 1]) and the objective every few iterations."""

    poisons: torch.Tensor
    history: list[dict]
    info: dict


def every(iterations: int, blocks: int = 20) -> int:
    """Iterations between two history rows (and progress lines)."""
    return max(1, iterations // blocks)


def project(x: torch.Tensor, bases: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the L-inf ball of radius eps around `bases`, and into [0, 1]."""
    return torch.max(torch.min(x, bases + eps), bases - eps).clamp(0, 1)
