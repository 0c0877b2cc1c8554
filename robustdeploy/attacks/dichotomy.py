"""Seed 001's dichotomy attack: a binary search over the norm N of a fixed-norm gradient attack.

The seed runs, per image, gradient descent on the true label's confidence with ||r|| = N and bisects N
in [0, 4]. Here the search is vectorised (every sample keeps its own interval), the fixed-norm attack
is PGD inside the N-ball with per-sample early stop (a few dozen steps, not 1000), and the loss is
cross-entropy, whose normalised gradient is the confidence's (-log is monotone). L2 and L-inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustdeploy.attacks.base import (
    ATTACKS,
    LOSSES,
    MinimalNormAttack,
    Model,
    loss_per_sample,
    lp_norm,
    predict,
    project,
)
from robustdeploy.errors import RobustDeployError


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *[1] * (like.dim() - 1))


@ATTACKS.register("dichotomy")
@dataclass
class Dichotomy(MinimalNormAttack):
    """Bisect the budget per sample; keep the smallest adversarial any probe found."""

    norm: str = "l2"
    search_steps: int = 10
    steps: int = 20
    rel_step: float = 2.5
    upper: float | None = None  # the seed's interval [0, 4] for L2; [0, 1] for L-inf
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.search_steps < 1:
            raise RobustDeployError("steps and search_steps must be at least 1")
        if self.loss not in LOSSES:
            raise RobustDeployError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.upper is not None and self.upper <= 0:
            raise RobustDeployError(f"upper must be positive, got {self.upper}")

    def minimize(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        best_norm = torch.full((len(x),), float("inf"), device=x.device)
        upper = self.upper if self.upper is not None else (4.0 if self.norm == "l2" else 1.0)
        lo = torch.zeros(len(x), device=x.device)
        hi = torch.full((len(x),), upper, device=x.device)
        active = predict(model, x) == y  # samples already wrong keep x
        for probe in range(self.search_steps):
            index = active.nonzero().flatten()
            if not len(index):
                break
            eps = hi[index] if probe == 0 else (lo[index] + hi[index]) / 2
            adv, fooled = self._fixed_norm(model, x[index], y[index], eps)
            size = lp_norm(adv - x[index], self.norm)
            better = fooled & (size < best_norm[index])
            best[index[better]], best_norm[index[better]] = adv[better], size[better]
            hi[index] = torch.where(fooled, torch.minimum(eps, size), hi[index])
            lo[index] = torch.where(fooled, lo[index], eps)
            if probe == 0:
                active[index[~fooled]] = False  # nothing within the whole interval: give up on it
        return best

    def _fixed_norm(self, model: Model, x: torch.Tensor, y: torch.Tensor,
                    eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PGD inside per-sample eps-balls from x; returns (first adversarial iterate or last one, fooled)."""
        alpha = self.rel_step * eps / self.steps
        out, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        work, current = torch.arange(len(x), device=x.device), x.clone()
        for step in range(self.steps + 1):
            current = current.detach().requires_grad_(step < self.steps)
            with torch.set_grad_enabled(step < self.steps):
                logits = model(current)
            wrong = logits.argmax(1) != y[work]
            out[work] = current.detach()
            fooled[work[wrong]] = True
            if step == self.steps or wrong.all():
                break
            self.stats.gradients += len(work)
            grad, = torch.autograd.grad(loss_per_sample(logits, y[work], self.loss).sum(), current)
            keep = ~wrong
            work, current, grad = work[keep], current.detach()[keep], grad[keep]
            step_dir = grad.sign() if self.norm == "linf" else grad / _view(lp_norm(grad, "l2").clamp_min(1e-12), grad)
            current = project(current + _view(alpha[work], grad) * step_dir, x[work], eps[work], self.norm)
        return out, fooled
