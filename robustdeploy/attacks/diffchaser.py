"""DiffChaser-style genetic search for disagreements, queries only (after Xie et al., "DiffChaser: detecting
disagreements for deep neural networks", IJCAI 2019; the fitness below is this module's own).

A population of 8-bit images inside the eps-ball evolves by tournament selection, uniform crossover and
mutation, with one elite kept per generation. Fitness rewards nearness to either model's decision boundary and,
past it, a split: with a = the reference's margin z_c - max_{j != c} z_j and b = the deployment's,
fitness = -sign(a * b) * min(|a|, |b|), positive exactly when the margins have opposite signs. Both models are
only queried, so this also works when the reference is an ONNX graph without gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustdeploy.attacks.differential import SEARCHES, DifferentialSearch, ask, margin
from robustdeploy.errors import RobustDeployError


@SEARCHES.register("genetic")
@dataclass
class GeneticDiff(DifferentialSearch):
    """Population per sample, `mutation` = share of pixels redrawn uniformly on the grid inside the ball."""

    population: int = 10
    mutation: float = 0.1
    tournament: int = 2

    def __post_init__(self) -> None:
        if self.population < 2 or self.tournament < 1 or not 0 < self.mutation <= 1:
            raise RobustDeployError("genetic search: population >= 2, tournament >= 1, mutation in (0, 1]")

    def _run(self, reference, deployment, x, c, eps, budget, realise, out) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        n, shape, levels = len(x), x.shape[1:], math.floor(eps * 255 + 1e-6)
        flat = x.flatten(1)
        people = torch.zeros(n, self.population, flat.shape[1], device=x.device)
        people = self._mutate(people, levels, generator)
        fitness = torch.full((n, self.population), -math.inf, device=x.device)
        fresh = torch.ones(self.population, dtype=torch.bool)  # individuals not yet evaluated
        while True:
            active = (~out.found & (out.queries < budget)).nonzero().flatten()
            if not len(active):
                return
            room = int((budget - out.queries[active]).min())
            slots = fresh.nonzero().flatten()[:room]
            z = realise((flat[active, None] + people[active][:, slots] / 255).reshape(-1, *shape),
                        x[active].repeat_interleave(len(slots), 0), eps)
            each = c[active].repeat_interleave(len(slots))
            with torch.no_grad():
                ref = reference(z).float()
                dep = ask(deployment, z, active.repeat_interleave(len(slots)), out)
            a, b = margin(ref, each), margin(dep, each)
            split = (ref.argmax(1).to(z.device) != dep.argmax(1)).view(len(active), len(slots))
            score = (-torch.sign(a * b) * torch.minimum(a.abs(), b.abs())).view(len(active), len(slots))
            fitness[active[:, None], slots] = score
            people[active[:, None], slots] = torch.round(z.flatten(1) * 255 - torch.round(
                flat[active] * 255).repeat_interleave(len(slots), 0)).view(len(active), len(slots), -1)
            hit = split.any(1)
            first = split.float().argmax(1)
            chosen = z.view(len(active), len(slots), *shape)[torch.arange(len(active)), first]
            out.adv[active[hit]], out.found[active[hit]] = chosen[hit], True
            people, fitness = self._next(people, fitness, levels, generator)
            fresh = torch.arange(self.population) > 0  # the elite sits in slot 0 and keeps its fitness

    def _next(self, people, fitness, levels, generator):
        """Elite in slot 0; the rest: children of tournament winners, crossed uniformly, mutated."""
        n, size, dim = people.shape
        rows = torch.arange(n, device=people.device)[:, None]
        elite = fitness.argmax(1)

        def winners() -> torch.Tensor:
            entrants = torch.randint(0, size, (n, size - 1, self.tournament), generator=generator).to(people.device)
            scores = fitness[rows[..., None], entrants]
            return entrants.gather(2, scores.argmax(2, keepdim=True)).squeeze(2)

        mum, dad = people[rows, winners()], people[rows, winners()]
        mix = torch.rand(n, size - 1, dim, generator=generator).to(people.device) < 0.5
        children = self._mutate(torch.where(mix, mum, dad), levels, generator)
        best = people[rows.squeeze(1), elite][:, None]
        return torch.cat([best, children], 1), torch.cat([fitness[rows.squeeze(1), elite][:, None],
                                                          torch.full_like(fitness[:, 1:], -math.inf)], 1)

    def _mutate(self, people: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
        redraw = torch.rand(people.shape, generator=generator).to(people.device) < self.mutation
        values = torch.randint(-levels, levels + 1, people.shape, generator=generator).to(people)
        return torch.where(redraw, values, people)
