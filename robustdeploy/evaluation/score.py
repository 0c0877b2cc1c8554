"""The one score. A sample is robust on a runtime at a budget when that runtime gets it right clean and on every
set of the cascade that applies to it; robust accuracy after attack k is the worst case over attacks 1..k."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Cell:
    """One runtime, one budget, the cascade up to one attack; indices refer to the evaluated samples."""

    runtime: str
    attack: str
    eps: float
    clean_accuracy: float
    robust_accuracy: float
    own_robust_accuracy: float
    attack_success_rate: float
    clean_differs_from_torch: list[int]
    outcome_differs_from_torch: list[int]


def percent(mask: torch.Tensor) -> float:
    return 100.0 * float(mask.float().mean()) if len(mask) else 0.0


class Predictions:
    """Labels of each runner on each stored set, computed once."""

    def __init__(self, runners: dict[str, Predict], stored: dict[str, torch.Tensor]) -> None:
        self.runners, self.stored, self.cache = runners, stored, {}

    def __call__(self, runner: str, key: str) -> torch.Tensor:
        if (runner, key) not in self.cache:
            self.cache[runner, key] = self.runners[runner](self.stored[key])
        return self.cache[runner, key]


def pick(sets: Iterable[dict], runtime: str, eps: float) -> list[dict]:
    """The set of each attack stage that applies to `runtime` at `eps`: its own if the attack ran on it."""
    chosen: dict[int, dict] = {}
    for s in sets:
        if s["eps"] is None or abs(s["eps"] - eps) > 1e-12:
            continue
        if s["stage"] not in chosen or s["source"] == runtime:
            chosen[s["stage"]] = s
    return [chosen[k] for k in sorted(chosen)]


def score_cascade(runtimes: list[str], sets: list[dict], epsilons: Iterable[float], y: torch.Tensor,
                  predictions: Predictions) -> list[Cell]:
    """Cells for every runtime x budget x attack stage, from stored sets only (the same code re-scores)."""
    cells = []
    torch_clean = predictions("torch", "x")
    for runtime in runtimes:
        clean = predictions(runtime, "x")
        for eps in epsilons:
            robust, reference = clean == y, torch_clean == y
            for s in pick(sets, runtime, eps):
                own = predictions(runtime, s["key"]) == y
                robust = robust & own
                reference = reference & (predictions("torch", s["key"]) == y)
                cells.append(Cell(
                    runtime=runtime, attack=s["attack"], eps=eps, clean_accuracy=percent(clean == y),
                    robust_accuracy=percent(robust), own_robust_accuracy=percent((clean == y) & own),
                    attack_success_rate=100.0 * float(((clean == y) & ~robust).sum()) / max(1, int((clean == y).sum())),
                    clean_differs_from_torch=(clean != torch_clean).nonzero().flatten().tolist(),
                    outcome_differs_from_torch=(robust != reference).nonzero().flatten().tolist(),
                ))
    return cells

