"""Square attack, score-based, L-inf and L2 (Andriushchenko et al., ECCV 2020, arXiv:1912.00049).

Random search over square-shaped updates, accepted when they lower the margin z_y - max_{j != y} z_j.
Defaults follow AutoAttack's standard version (Croce & Hein, ICML 2020), strong on every input size: 10 000
queries, p_init 0.8 for both norms (the paper's 0.05 / 0.1 were tuned on ImageNet and are weak on small images),
the reference code's piecewise-constant schedule of p rescaled to the budget, vertical-stripe (L-inf) and
pseudo-Gaussian tile (L2) starts. Uses only the scores of the callable; every forward pass counts one query per
sample. With a `realiser` (the evaluation core's 8-bit grid) every candidate is realised before it is sent, so the
example kept is the one the deployment scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from robustdeploy.attacks.base import ATTACKS, FixedBudgetAttack, Model, loss_per_sample
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """The reference code's halving schedule of the fraction of pixels changed, rescaled to 10 000 iterations."""
    it = int(it / n_iters * 10000)
    bounds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
    halvings = sum(it > b for b in bounds)
    return p_init / 2 ** halvings


def _margin(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j from the callable's scores (negative once fooled)."""
    return -loss_per_sample(model(x).detach().float().to(y.device), y, "margin")


def _pseudo_gaussian(rows: int, cols: int) -> torch.Tensor:
    delta = torch.zeros(rows, cols)
    r, c = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[max(r - k, 0):min(r + k + 1, rows), max(c - k, 0):min(c + k + 1, cols)] += 1 / (k + 1) ** 2
    return delta / delta.norm().clamp_min(1e-12)


def meta_pseudo_gaussian(s: int, generator: torch.Generator) -> torch.Tensor:
    """The reference code's L2 update: two pseudo-Gaussian halves of opposite sign, randomly transposed."""
    delta = torch.zeros(s, s)
    delta[: s // 2] = _pseudo_gaussian(s // 2, s) if s // 2 else delta[: s // 2]
    delta[s // 2 :] = -_pseudo_gaussian(s - s // 2, s)
    delta /= delta.norm()
    return delta.T if torch.rand(1, generator=generator).item() > 0.5 else delta


def _signs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


@ATTACKS.register("square")
@dataclass
class Square(FixedBudgetAttack):
    """Square attack: `max_queries` forward passes per sample at most (the clean check included)."""

    max_queries: int = 10000
    p_init: float = 0.8
    seed: int = 0

    needs: ClassVar[Capability] = Capability.SCORES

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_queries < 1:
            raise RobustDeployError(f"max_queries must be at least 1, got {self.max_queries}")
        if not 0 < self.p_init <= 1:
            raise RobustDeployError(f"p_init must be in (0, 1], got {self.p_init}")

    @torch.no_grad()
    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        queries = torch.ones(len(x), dtype=torch.long)
        margin = _margin(model, x, y)
        best = x.clone()
        index = (margin > 0).nonzero().flatten()
        if len(index) and self.max_queries > 1 and eps > 0:
            start = self.seen(self._init(x[index], eps, generator), x[index], eps)
            best[index], margin[index] = start, _margin(model, start, y[index])
            queries[index] += 1
        for it in range(self.max_queries - 2):
            index = index[margin[index] > 0]
            if not len(index) or eps == 0:
                break
            p = p_schedule(self.p_init, it, self.max_queries)
            step = self._step_linf if self.norm == "linf" else self._step_l2
            candidate = self.seen(step(x[index], best[index], eps, p, generator), x[index], eps)  # what is sent
            new = _margin(model, candidate, y[index])
            queries[index] += 1
            better = new < margin[index]
            best[index[better]], margin[index[better]] = candidate[better], new[better]
        self.queries_per_sample = queries
        self.stats.queries += int(queries.sum())
        return best

    def _init(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":  # vertical stripes of +-eps
            return (x + eps * _signs((n, c, 1, w), generator).to(x.device)).clamp(0, 1)
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        top = (h - s * (h // s)) // 2
        for i in range(h // s):
            for j in range(w // s):
                tile = meta_pseudo_gaussian(s, generator).to(x.device) * _signs((n, c, 1, 1), generator).to(x.device)
                delta[:, :, top + i * s : top + (i + 1) * s, top + j * s : top + (j + 1) * s] += tile
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + eps * delta).clamp(0, 1)

    @staticmethod
    def _window(h: int, w: int, s: int, generator: torch.Generator) -> tuple[slice, slice]:
        r = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        col = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        return slice(r, r + s), slice(col, col + s)

    def _step_linf(self, x: torch.Tensor, best: torch.Tensor, eps: float, p: float,
                   generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
        rows, cols = self._window(h, w, s, generator)
        delta = best - x
        new = eps * _signs((n, c, 1, 1), generator).to(x.device)
        for _ in range(10):  # redraw the signs of windows that would not change (the reference's loop)
            moved = ((x[:, :, rows, cols] + new).clamp(0, 1) - best[:, :, rows, cols]).abs().flatten(1).sum(1)
            same = moved < 1e-7
            if not same.any():
                break
            new[same] = eps * _signs((int(same.sum()), c, 1, 1), generator).to(x.device)
        delta[:, :, rows, cols] = new
        return (x + delta).clamp(0, 1)

    def _step_l2(self, x: torch.Tensor, best: torch.Tensor, eps: float, p: float,
                 generator: torch.Generator) -> torch.Tensor:
        """Move mass into window 1 from window 2, keeping ||delta|| = eps (the reference's L2 update)."""
        n, c, h, w = x.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, min(h, w) - 1)
        (r1, c1), (r2, c2) = self._window(h, w, s, generator), self._window(h, w, s, generator)
        delta = best - x
        mask1, mask2 = torch.zeros_like(x[:1]), torch.zeros_like(x[:1])
        mask1[:, :, r1, c1], mask2[:, :, r2, c2] = 1, 1
        window_norm = (delta * mask1).flatten(2).norm(dim=2).view(n, c, 1, 1)
        image_norm = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
        both_norm = (delta * torch.maximum(mask1, mask2)).flatten(2).norm(dim=2).view(n, c, 1, 1)
        new = meta_pseudo_gaussian(s, generator).to(x.device) * _signs((n, c, 1, 1), generator).to(x.device)
        new = new + delta[:, :, r1, c1] / (1e-10 + window_norm)
        new = new / new.flatten(2).norm(dim=2).clamp_min(1e-12).view(n, c, 1, 1)
        new = new * ((eps**2 - image_norm**2).clamp_min(0) / c + both_norm**2).sqrt()
        delta[:, :, r2, c2] = 0
        delta[:, :, r1, c1] = new
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * eps
        return (x + delta).clamp(0, 1)
