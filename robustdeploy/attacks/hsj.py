"""HopSkipJump, decision-based, L2 and L-inf (Chen, Jordan & Wainwright, IEEE S&P 2020, arXiv:1904.02144).

Uses only the top-1 label of the callable. From a random misclassified start it alternates a binary
search to the decision boundary, a Monte-Carlo estimate of the boundary's normal (sqrt(t) * 100 probes at
iteration t) and a geometric step along it. Defaults follow the paper's reference code: gamma 1,
100 initial probes, 40 iterations. As a fixed-budget attack it succeeds when the best boundary point it finds
lies within eps; a sample whose next iteration could overrun `max_queries` stops, so the budget holds.

On a quantised input (`quantum` and `realiser` set by the evaluation core: the deployment's 8-bit grid) every
query is realised first, so the search runs on the grid: the binary search stops at one grid step, probes move
a pixel by a few grid steps (smaller ones round away), and every kept point is the realised
image the deployment answered for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from robustdeploy.attacks.base import ATTACKS, FixedBudgetAttack, Model, lp_norm
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError

# Probes on a grid move a pixel by about this many grid steps (root mean square); a one-step probe rounds to
# a coarse, mostly-zero direction. Real MNIST CNN, L2 eps 2, 20 samples, 10 iterations: 0.5 step leaves 70 %
# robust, 1 step 65 %, 2 steps 35 %, 4 steps 30 % (the same search in float, unrounded: 35 %).
PROBE_STEPS = 4.0
STEP_HALVINGS = 15  # cap of the geometric step-size search (unbounded in the reference code)


class _Oracle:
    """Top-1 decisions of a callable, with a query count per sample."""

    def __init__(self, model: Model, y: torch.Tensor) -> None:
        self.model, self.y = model, y
        self.used = torch.zeros(len(y), dtype=torch.long)

    def adversarial(self, index: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Whether each row of z (belonging to sample index[i]) is misclassified."""
        self.used.index_add_(0, index.cpu(), torch.ones(len(index), dtype=torch.long))
        return self.model(z).argmax(1).to(self.y.device) != self.y[index]


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *[1] * (like.dim() - 1))


@ATTACKS.register("hopskipjump")
@dataclass
class HopSkipJump(FixedBudgetAttack):
    """HopSkipJump (untargeted) with a per-sample query budget that includes the clean check."""

    max_queries: int = 10000
    steps: int = 40
    gamma: float = 1.0
    init_evals: int = 100
    max_evals: int = 10000
    init_tries: int = 100
    seed: int = 0

    needs: ClassVar[Capability] = Capability.DECISIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_queries < 1:
            raise RobustDeployError(f"max_queries must be at least 1, got {self.max_queries}")
        if min(self.steps, self.init_evals, self.max_evals, self.init_tries) < 1 or self.gamma <= 0:
            raise RobustDeployError("steps, init_evals, max_evals, init_tries and gamma must be positive")

    def _grid(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`z` as the deployment receives it, with no budget applied (the search may leave the eps-ball)."""
        return self.seen(z, x, None)

    def _project(self, x: torch.Tensor, adv: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if self.norm == "l2":
            return (1 - _view(alpha, x)) * x + _view(alpha, x) * adv
        return torch.minimum(torch.maximum(adv, x - _view(alpha, x)), x + _view(alpha, x))

    def _boundary(self, oracle: _Oracle, index: torch.Tensor, x: torch.Tensor, adv: torch.Tensor,
                  theta: float) -> torch.Tensor:
        """Binary search between x (clean) and adv (adversarial, realised); returns the adversarial end, realised.
        On a grid the search stops once the interval moves no pixel by more than one grid step."""
        if self.norm == "l2":
            high, threshold = torch.ones(len(x)), torch.full((len(x),), theta)
            if self.quantum:
                threshold = threshold.maximum(self.quantum / lp_norm(adv - x, "linf").cpu().clamp_min(1e-12))
        else:
            high = lp_norm(adv - x, "linf").cpu()
            threshold = (high * theta).clamp(max=theta).clamp(min=self.quantum or 0.0)
        low = torch.zeros(len(x))
        while True:
            open_ = ((high - low) / threshold > 1).nonzero().flatten()
            if not len(open_):
                return self._grid(self._project(x, adv, high.to(x.device)), x)
            mid = (high[open_] + low[open_]) / 2
            probe = self._grid(self._project(x[open_], adv[open_], mid.to(x.device)), x[open_])
            hit = oracle.adversarial(index[open_], probe).cpu()
            high[open_] = torch.where(hit, mid, high[open_])
            low[open_] = torch.where(hit, low[open_], mid)

    def _gradient(self, oracle: _Oracle, index: torch.Tensor, point: torch.Tensor, delta: torch.Tensor,
                  evals: int, generator: torch.Generator) -> torch.Tensor:
        """Monte-Carlo estimate of the boundary normal at `point` (Eq. 9 with the baseline of Eq. 16), from the
        probes' realised displacements."""
        shape = (len(point), evals, *point.shape[1:])
        noise = torch.randn(shape, generator=generator) if self.norm == "l2" \
            else torch.rand(shape, generator=generator) * 2 - 1
        noise = noise.to(point.device)
        noise /= noise.flatten(2).norm(dim=2).view(*shape[:2], *[1] * (point.dim() - 1))
        scale = delta.view(-1, 1, *[1] * (point.dim() - 1))
        probes = (point[:, None] + scale * noise).clamp(0, 1)
        if self.quantum:
            probes = self._grid(probes.flatten(0, 1), point.repeat_interleave(evals, 0)).view(shape)
        directions = (probes - point[:, None]) / scale
        hit = oracle.adversarial(index.repeat_interleave(evals), probes.flatten(0, 1)).view(len(point), evals)
        sign = hit.float() * 2 - 1
        mean = sign.mean(1, keepdim=True)
        weights = torch.where(mean.abs() == 1, mean, sign - mean)
        grad = (weights.view(*shape[:2], *[1] * (point.dim() - 1)) * directions).mean(1)
        return grad / _view(lp_norm(grad, "l2").clamp_min(1e-12), grad)

    @torch.no_grad()
    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        d = x[0].numel()
        theta = self.gamma / (d**1.5 if self.norm == "l2" else d**2)
        floor = PROBE_STEPS * (self.quantum or 0.0) * math.sqrt(d)  # smallest probe radius that rounding keeps
        search = math.ceil(math.log2(1 / max(theta, self.quantum or 0.0)))  # most queries one search can take
        oracle = _Oracle(model, y)
        index = (~oracle.adversarial(torch.arange(len(x)), x)).nonzero().flatten().cpu()
        start, found = x.clone(), torch.zeros(len(x), dtype=torch.bool)
        for _ in range(self.init_tries):  # uniform noise until it is misclassified (the reference's start)
            index = index[oracle.used[index] + 1 + search <= self.max_queries]
            todo = index[~found[index]]
            if not len(todo):
                break
            noise = self._grid(torch.rand(x[todo].shape, generator=generator).to(x.device), x[todo])
            hit = oracle.adversarial(todo, noise).cpu()
            start[todo[hit]], found[todo[hit]] = noise[hit], True
        index = index[found[index]]
        best, current = x.clone(), x.clone()
        dist = torch.full((len(x),), float("inf"))  # of `best`: the closest realised adversarial found
        here = dist.clone()  # of `current`: where the search goes on from
        if len(index):
            current[index] = self._boundary(oracle, index, x[index], start[index], theta)
            here[index] = lp_norm(current[index] - x[index], self.norm).cpu()
            best[index], dist[index] = current[index], here[index]
        iterations = torch.zeros(len(x), dtype=torch.long)
        for t in range(1, self.steps + 1):
            evals = int(min(self.init_evals * math.sqrt(t), self.max_evals))
            index = index[(dist[index] > eps + 1e-6) & (oracle.used[index] + evals + STEP_HALVINGS + search
                                                 <= self.max_queries)]
            if not len(index):
                break
            iterations[index] += 1
            xs, point = x[index], current[index]
            delta = torch.full((len(index),), 0.1) if t == 1 else \
                (math.sqrt(d) if self.norm == "l2" else d) * theta * here[index]
            grad = self._gradient(oracle, index, point, delta.clamp(min=floor).to(x.device), evals, generator)
            update = grad if self.norm == "l2" else grad.sign()
            step = _view(here[index] / math.sqrt(t), x).to(x.device)
            moved = point.clone()
            pending = torch.arange(len(index))
            for _ in range(STEP_HALVINGS):  # geometric step-size search
                candidate = self._grid((point[pending] + step[pending] * update[pending]).clamp(0, 1), xs[pending])
                hit = oracle.adversarial(index[pending], candidate).cpu()
                moved[pending[hit]] = candidate[hit]
                pending = pending[~hit]
                if not len(pending):
                    break
                step[pending] /= 2
            current[index] = self._boundary(oracle, index, xs, moved, theta)
            here[index] = lp_norm(current[index] - xs, self.norm).cpu()
            closer = index[here[index] < dist[index]]
            best[closer], dist[closer] = current[closer], here[closer]
        self.queries_per_sample, self.iterations_per_sample = oracle.used, iterations
        self.stats.queries += int(oracle.used.sum())
        return torch.where(_view((dist <= eps + 1e-6).to(x.device), x), best, x)
