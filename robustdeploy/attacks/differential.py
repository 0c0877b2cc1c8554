"""Differential searches: inside the L-inf eps-ball around x, an 8-bit input on which a reference model and a
deployment predict different classes (differential testing of compressed models: DiffChaser, Xie et al.,
ISSTA 2019; DFlare, Xiao et al., 2023).

Both models map pixels to logits. The deployment is only queried, on realised (8-bit) inputs, and every query
counts one per sample against the budget, the clean query included. A search never attacks a sample on which
the two already disagree clean: that sample's x is the disagreement.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robustdeploy.attacks.base import Model, loss_per_sample
from robustdeploy.attacks.pgd import PGD
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.progress import Meter
from robustdeploy.registry import Registry

Realise = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (adv, x, eps) -> 8-bit adv inside eps


@dataclass
class Outcome:
    """Per sample: the input found (x where none), whether the search saw the models split there, and the
    deployment queries it spent."""

    adv: torch.Tensor
    found: torch.Tensor
    queries: torch.Tensor


@dataclass
class DifferentialSearch(ABC):
    """Knobs of the method live in the constructor; the eps and the query budget are arguments of the call."""

    seed: int = 0
    gradients: int = field(default=0, init=False, repr=False, compare=False)  # reference forward+backward passes
    needs: ClassVar[Capability] = Capability.SCORES  # what the reference must offer

    def params(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "gradients"}

    def search(self, reference: Model, deployment: Model, x: torch.Tensor, eps: float, budget: int,
               realise: Realise) -> Outcome:
        """Search every sample of `x` with at most `budget` deployment queries each."""
        if budget < 1:
            raise RobustDeployError(f"the query budget must be at least 1, got {budget}")
        queries = torch.ones(len(x), dtype=torch.long, device=x.device)
        with torch.no_grad():
            ref, dep = labels(reference, x), labels(deployment, x)
        outcome = Outcome(x.clone(), ref != dep, queries)
        todo = ~outcome.found & (budget > 1) & (math.floor(eps * 255 + 1e-6) > 0)  # else the ball holds x alone
        if todo.any():
            index = todo.nonzero().flatten()
            sub = Outcome(x[index].clone(), outcome.found[index], queries[index])
            with Meter(len(index) * (budget - 1), f"disagreement search, eps {eps:g}", "query") as meter:
                def watched(model: Model) -> Model:  # each call of either model shows the queries spent so far
                    def call(z: torch.Tensor) -> torch.Tensor:
                        logits = model(z)
                        meter.update(lambda: int(torch.where(sub.found, budget, sub.queries).sum()) - len(index))
                        return logits
                    return call

                self._run(watched(reference), watched(deployment), x[index], ref[index], eps, budget, realise, sub)
            outcome.adv[index], outcome.found[index], outcome.queries[index] = sub.adv, sub.found, sub.queries
        return outcome

    @abstractmethod
    def _run(self, reference: Model, deployment: Model, x: torch.Tensor, c: torch.Tensor, eps: float, budget: int,
             realise: Realise, out: Outcome) -> None:
        """Fill `out` for samples on which both models predict `c` on x."""


def labels(model: Model, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1).to(x.device)


def margin(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """z_c - max_{j != c} z_j: positive while the model predicts c."""
    return -loss_per_sample(logits.float().to(c.device), c, "margin")


def ask(deployment: Model, z: torch.Tensor, index: torch.Tensor, out: Outcome) -> torch.Tensor:
    """The deployment's logits on `z` (inputs of samples `index`), one query per sample."""
    out.queries.index_add_(0, index, torch.ones_like(index))
    return deployment(z).float().to(z.device)


SEARCHES: Registry[DifferentialSearch] = Registry("search")


@SEARCHES.register("gradient")
@dataclass
class GradientDiff(DifferentialSearch):
    """Gradient-guided boundary walk. Per restart: PGD with the margin loss on the reference (Madry et al. 2018;
    a random start from the second restart on) gives an 8-bit end point near or past the reference's decision
    boundary; the 8-bit path from x to it (a point per grid step between them) is bisected on the reference to the
    step where the reference leaves class c; the deployment is queried on both sides of that step. Where the
    deployment's boundary is off the reference's by a grid step or more (quantisation error of the margin larger
    than what one step changes), one side splits them. If the reference never leaves c, the deployment is asked
    at the end point, where the reference's margin is smallest. At most 2 queries per restart."""

    steps: int = 10
    rel_step: float = 2.5
    needs: ClassVar[Capability] = Capability.GRADIENTS

    def _run(self, reference, deployment, x, c, eps, budget, realise, out) -> None:
        base = torch.round(x * 255)
        restart = 0
        while True:
            active = (~out.found & (out.queries < budget)).nonzero().flatten()
            if not len(active):
                return
            pgd = PGD(steps=self.steps, rel_step=self.rel_step, loss="margin", random_start=restart > 0,
                      seed=self.seed + restart)
            pgd.realiser = realise
            xa, ca = x[active], c[active]
            end = realise(pgd.perturb(reference, xa, ca, eps), xa, eps)
            self.gradients += pgd.stats.gradients
            with torch.no_grad():
                self._walk(reference, deployment, base[active], end, ca, active, budget, out)
            restart += 1

    def _walk(self, reference, deployment, base, end, c, index, budget, out) -> None:
        steps = torch.round(end * 255) - base
        total = steps.flatten(1).abs().sum(1).clamp_min(1)

        def point(k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """Step k (one per row) of the path of samples `rows`."""
            frac = (k / total[rows]).view(-1, *[1] * (base.dim() - 1))
            moved = torch.floor(steps[rows].abs() * frac + 1e-9) * steps[rows].sign()
            return (base[rows] + moved).clamp(0, 255) / 255

        flipped = labels(reference, end) != c
        lo, hi = torch.zeros_like(total), total.clone()
        rows = flipped.nonzero().flatten()
        while len(rows := rows[hi[rows] - lo[rows] > 1]):
            mid = (lo[rows] + hi[rows]) // 2
            left = labels(reference, point(mid, rows)) == c[rows]
            lo[rows] = torch.where(left, mid, lo[rows])
            hi[rows] = torch.where(left, hi[rows], mid)
        # the deployment on the reference's side of c: the last c point of the path (or the end point)
        every = torch.arange(len(c), device=c.device)
        self._ask(reference, deployment, point(torch.where(flipped, lo, hi), every), index, budget, out)
        rows = flipped.nonzero().flatten()
        if len(rows):
            self._ask(reference, deployment, point(hi[rows], rows), index[rows], budget, out)

    @staticmethod
    def _ask(reference, deployment, z, index, budget, out) -> None:
        keep = ~out.found[index] & (out.queries[index] < budget)
        if not keep.any():
            return
        z, index = z[keep], index[keep]
        split = labels(reference, z) != ask(deployment, z, index, out).argmax(1).to(z.device)
        out.adv[index[split]], out.found[index[split]] = z[split], True
