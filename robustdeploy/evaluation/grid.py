"""The deployment's threat model: 8-bit images, budgets after rounding. `realise` gives the rounded image inside
the budget; `OnGrid` shows a model only 8-bit inputs (straight-through gradient, as BPDA, Athalye et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LEVELS = 255.0
ROUNDING = ("fooled_before", "fooled_after", "stopped_fooling", "started_fooling")  # rounding_report's counts


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """Round to 256 levels; gradients pass straight through."""
    rounded = torch.round(x * LEVELS) / LEVELS
    return x + (rounded - x).detach() if x.requires_grad else rounded


def grid_budget(eps: float, norm: str) -> float:
    """The budget an attack runs at: for L-inf the largest whole number of grid steps inside eps."""
    return math.floor(eps * LEVELS + 1e-6) / LEVELS if norm == "linf" else eps


class OnGrid(torch.nn.Module):
    """`model` as a deployment sees it: every input rounded to the 8-bit grid first."""

    def __init__(self, model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_grid(x))


def realise(adv: torch.Tensor, x: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """`adv` rounded to the 8-bit grid inside the eps-ball around `x` (itself on the grid).

    L-inf: steps beyond the grid budget are clipped to it (a no-op for attacks run at `grid_budget`).
    L2: where rounding pushes the norm over eps, the coordinates that rounding enlarged most are truncated
    towards x, one grid step each, until the example fits: the fewest changes that restore the budget.
    """
    delta = (adv - x) * LEVELS
    steps = torch.round(delta)
    if eps is not None and norm == "linf":
        limit = math.floor(eps * LEVELS + 1e-6)
        steps = steps.clamp(-limit, limit)
    elif eps is not None:
        steps = _fit_l2(delta.flatten(1), steps.flatten(1), eps * LEVELS).view_as(steps)
    return (torch.round(x * LEVELS) + steps).clamp(0.0, LEVELS) / LEVELS


def _fit_l2(delta: torch.Tensor, steps: torch.Tensor, radius: float) -> torch.Tensor:
    squared = steps.pow(2).sum(1)
    over = squared > radius**2 + 1e-6
    if not over.any():
        return steps
    d, s = delta[over], steps[over].clone()
    enlarged = s.abs() > d.abs()  # rounded away from x: truncating these costs the least
    gain = torch.where(enlarged, s.abs() - d.abs(), torch.full_like(d, -1.0))
    order = gain.argsort(1, descending=True)
    saving = torch.where(enlarged, 2 * s.abs() - 1, torch.zeros_like(d)).gather(1, order).cumsum(1)
    needed = ((squared[over, None] - saving) > radius**2 + 1e-6).sum(1)  # how many to truncate
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d.shape[1]).expand_as(order))
    fix = (rank <= needed[:, None]) & enlarged
    s[fix] -= s[fix].sign()
    steps[over] = s
    return steps


def rounding_report(predict: Callable[[torch.Tensor], torch.Tensor], raw: torch.Tensor, rounded: torch.Tensor,
                    y: torch.Tensor) -> dict:
    """Samples fooling the attacked model before and after rounding: the cost of the 8-bit threat model."""
    before, after = predict(raw) != y, predict(rounded) != y
    return {"fooled_before": int(before.sum()), "fooled_after": int(after.sum()),
            "stopped_fooling": int((before & ~after).sum()), "started_fooling": int((~before & after).sum())}
