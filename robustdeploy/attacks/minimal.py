"""Seed 001's automatic minimal attack: one descent on a piecewise confidence/norm loss.

With c the softmax confidence in the true label and r the perturbation, the seed minimises c while
c > 0.2, c + ||r|| while 0.1 < c <= 0.2, and ||r|| once c <= 0.1, so the iterate is pushed across the
decision boundary and then pulled back along it. Here every sample follows its own branch in one
batched Adam descent (step size cosine-annealed), pixels stay in [0, 1], and the smallest iterate that
is really misclassified is kept. L2 and L-inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustdeploy.attacks.base import ATTACKS, MinimalNormAttack, Model, lp_norm, predict
from robustdeploy.errors import RobustDeployError


@ATTACKS.register("minimal")
@dataclass
class AutoMinimal(MinimalNormAttack):
    """Piecewise loss of seed 001 (thresholds `high` = 0.2, `low` = 0.1), Adam with learning rate `lr`."""

    norm: str = "l2"
    steps: int = 100
    lr: float = 0.01
    high: float = 0.2
    low: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.lr <= 0:
            raise RobustDeployError("steps must be at least 1 and lr positive")
        if not 0.0 < self.low <= self.high < 1.0:
            raise RobustDeployError(f"need 0 < low <= high < 1, got low={self.low}, high={self.high}")

    def _size(self, r: torch.Tensor) -> torch.Tensor:
        flat = r.flatten(1)
        return flat.abs().amax(1) if self.norm == "linf" else (flat.pow(2).sum(1) + 1e-12).sqrt()

    def minimize(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        todo = (predict(model, x) == y).nonzero().flatten()  # samples already wrong keep x
        if not len(todo):
            return best
        x0, y0 = x[todo], y[todo]
        best_norm = torch.full((len(x0),), float("inf"), device=x.device)
        r = torch.zeros_like(x0, requires_grad=True)
        optimiser = torch.optim.Adam([r], lr=self.lr)
        for step in range(self.steps + 1):
            logits = model(x0 + r)
            confidence = logits.softmax(1).gather(1, y0[:, None]).squeeze(1)
            wrong = logits.detach().argmax(1) != y0
            size = lp_norm(r.detach(), self.norm)
            better = wrong & (size < best_norm)
            best_norm[better] = size[better]
            best[todo[better]] = (x0 + r.detach())[better]
            if step == self.steps:
                break
            c = confidence
            loss = torch.where(c > self.high, c, torch.where(c > self.low, c + self._size(r), self._size(r)))
            for group in optimiser.param_groups:
                group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            self.stats.gradients += len(x0)
            optimiser.step()
            with torch.no_grad():
                r.copy_((x0 + r).clamp(0.0, 1.0) - x0)
        return best
