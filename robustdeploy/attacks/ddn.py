"""Decoupled Direction and Norm (Rony et al., CVPR 2019, arXiv:1811.09600): minimal L2 adversarials.

Each step ascends the cross-entropy along the normalised gradient (the direction), then rescales the
perturbation to a norm that shrinks by (1 - gamma) while the iterate is adversarial and grows by
(1 + gamma) while it is not. Defaults follow the paper: 100 steps, gamma 0.05, initial norm 1, step size
cosine-annealed from 1 to 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from robustdeploy.attacks.base import ATTACKS, MinimalNormAttack, Model, lp_norm, predict
from robustdeploy.errors import RobustDeployError


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *[1] * (like.dim() - 1))


@ATTACKS.register("ddn")
@dataclass
class DDN(MinimalNormAttack):
    """Per sample, the smallest-norm adversarial iterate is kept; pixels stay in [0, 1]."""

    norm: str = "l2"
    steps: int = 100
    gamma: float = 0.05
    init_norm: float = 1.0
    max_step: float = 1.0
    min_step: float = 0.01
    seed: int = 0

    norms: ClassVar[tuple[str, ...]] = ("l2",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise RobustDeployError("steps must be at least 1")
        if not 0.0 < self.gamma < 1.0 or self.init_norm <= 0:
            raise RobustDeployError("DDN needs 0 < gamma < 1 and init_norm > 0")

    def minimize(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        best_norm = torch.full((len(x),), float("inf"), device=x.device)
        todo = (predict(model, x) == y).nonzero().flatten()  # samples already wrong keep x
        if not len(todo):
            return best
        x0, y0 = x[todo], y[todo]
        delta = torch.zeros_like(x0)
        radius = torch.full((len(x0),), self.init_norm, device=x.device)
        worst = lp_norm(torch.maximum(x0, 1 - x0), "l2")  # no perturbation inside [0, 1] is longer
        generator = torch.Generator().manual_seed(self.seed)
        for step in range(self.steps):
            alpha = self.min_step + 0.5 * (self.max_step - self.min_step) * (1 + math.cos(math.pi * step / self.steps))
            delta.requires_grad_(True)
            logits = model(x0 + delta)
            loss = torch.nn.functional.cross_entropy(logits, y0, reduction="sum")
            grad, = torch.autograd.grad(loss, delta)
            self.stats.gradients += len(x0)
            delta = delta.detach()
            adv = logits.detach().argmax(1) != y0
            size = lp_norm(delta, "l2")
            better = adv & (size < best_norm[todo])
            best_norm[todo[better]] = size[better]
            best[todo[better]] = (x0 + delta)[better]
            g_norm = lp_norm(grad, "l2")
            dead = g_norm < 1e-12  # a flat spot: move in a random direction instead
            if dead.any():
                grad[dead] = torch.randn(grad[dead].shape, generator=generator).to(x.device)
                g_norm = lp_norm(grad, "l2")
            delta = delta + alpha * grad / _view(g_norm, grad)
            radius = torch.where(adv, radius * (1 - self.gamma), radius * (1 + self.gamma)).minimum(worst)
            delta = delta * _view(radius / lp_norm(delta, "l2").clamp_min(1e-12), delta)
            delta = (x0 + delta).clamp(0.0, 1.0) - x0
        with torch.no_grad():  # the last iterate is scored too
            adv = model(x0 + delta).argmax(1) != y0
        size = lp_norm(delta, "l2")
        better = adv & (size < best_norm[todo])
        best[todo[better]] = (x0 + delta)[better]
        self.stats.queries += len(x0)
        return best
