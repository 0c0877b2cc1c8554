"""The one score. A sample is robust on a runtime at a budget when that runtime gets it right clean and on every
stored example inside the budget, whichever source crafted it (an attacker can send any of them); robust accuracy
after attack k is the worst case over attacks 1..k. Every cell says its threat model (`threat`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from robustdeploy.progress import progress

SHOW_AFTER = 5.0  # seconds: scoring shows progress only where it is slow (big sets, many runtimes)


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
    threat: str = ""  # the threat models of the sets behind it, e.g. "white-box on torch + transfer from torch"


def percent(mask: torch.Tensor, of: torch.Tensor | None = None) -> float:
    """Share of `mask` (among `of`, default all) in percent, rounded to 1e-4 so results carry no float noise."""
    of = torch.ones_like(mask) if of is None else of
    return round(100.0 * int((mask & of).sum()) / max(1, int(of.sum())), 4)


def runners(runtimes: Iterable, batch_size: int) -> dict[str, Callable]:
    """Label -> predict function of each runtime."""
    return {r.label: functools.partial(r.predict, batch_size=batch_size) for r in runtimes}


def predictions(runners: dict[str, Callable], stored: Mapping[str, torch.Tensor]) -> Callable[[str, str], torch.Tensor]:
    """(runner, stored key) -> that runner's labels on that set, computed once; a store read from disk (one with
    `rows`) is predicted a window at a time, so a large result is scored without holding a set whole."""
    def labels(runner: str, key: str) -> torch.Tensor:
        if hasattr(stored, "rows"):
            return _join([runners[runner](part) for part in stored.rows(key)])
        return runners[runner](stored[key])
    return functools.cache(labels)


def _join(parts: list):
    """Per-window outputs of a runner joined along the samples: tensors, or tuples of them (label, score)."""
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def pick(sets: Iterable[dict], runtime: str, eps: float) -> list[dict]:
    """The set of each attack stage that applies to `runtime` at `eps`: its own if the attack ran on it."""
    chosen: dict[int, dict] = {}
    for s in sets:
        if s["eps"] is None or abs(s["eps"] - eps) > 1e-12:
            continue
        if s["stage"] not in chosen or s["source"] == runtime:
            chosen[s["stage"]] = s
    return [chosen[k] for k in sorted(chosen)]


def inside(sets: Iterable[dict], eps: float) -> list[list[dict]]:
    """Every stored set inside budget `eps` (its own budget at most `eps`), by attack stage in order."""
    stages: dict[int, list[dict]] = {}
    for s in sets:
        if s["eps"] is not None and s["eps"] <= eps + 1e-12:
            stages.setdefault(s["stage"], []).append(s)
    return [stages[k] for k in sorted(stages)]


def threat_on(s: dict, runtime: str) -> str:
    """The threat model a set stands for on `runtime`: its own (white-box, deployment-in-the-loop, score-based) where
    it was crafted on that runtime or crafted to transfer, else a transfer from its source."""
    own = s.get("threat") or f"crafted on {s['source']}"
    return own if s["source"] == runtime or own.startswith("transfer") else f"transfer from {s['source']}"


def threat_kinds(threat: str) -> str:
    """A cell's threat in a few words (for a legend): the kinds of its own attacks, or `transfer only from X`."""
    parts = [p for p in threat.split(" + ") if p]
    own = [p.rsplit(" on ", 1)[0] for p in parts if not p.startswith("transfer")]
    if own or not parts:
        return ", ".join(dict.fromkeys(own))
    return "transfer only from " + ", ".join(p.removeprefix("transfer from ") for p in parts)


def score_cascade(runtimes: list[str], sets: list[dict], epsilons: Iterable[float], y: torch.Tensor,
                  predictions: Callable[[str, str], torch.Tensor]) -> list[Cell]:
    """Cells for every runtime x budget x attack stage, from stored sets only (the same code re-scores): after stage
    k a sample is robust when no set of stages 1..k inside the budget fools the runtime."""
    cells = []
    torch_clean = predictions("torch", "x")
    for i, bar in progress(len(runtimes), "score", "runtime", lines=len(runtimes), leave=False,
                            after=SHOW_AFTER):
        runtime = runtimes[i]
        bar.set_postfix_str(runtime, refresh=False)
        clean = predictions(runtime, "x")
        for eps in epsilons:
            robust, reference, threats = clean == y, torch_clean == y, {}
            for stage in inside(sets, eps):
                own = clean == y
                for s in stage:
                    own = own & (predictions(runtime, s["key"]) == y)
                    reference = reference & (predictions("torch", s["key"]) == y)
                    threats[threat_on(s, runtime)] = None
                robust = robust & own
                cells.append(Cell(
                    runtime=runtime, attack=stage[0]["attack"], eps=eps, clean_accuracy=percent(clean == y),
                    robust_accuracy=percent(robust), own_robust_accuracy=percent(own),
                    attack_success_rate=percent(~robust, clean == y),
                    clean_differs_from_torch=(clean != torch_clean).nonzero().flatten().tolist(),
                    outcome_differs_from_torch=(robust != reference).nonzero().flatten().tolist(),
                    threat=" + ".join(threats),
                ))
    return cells



@dataclass(frozen=True)
class DiffCell:
    """One deployment against the reference at one budget, after a cascade of differential searches up to one."""

    runtime: str
    reference: str
    search: str
    eps: float
    clean_disagreement: float
    disagreement: float
    found_beyond_clean: int
    disagreeing: list[int]


def score_disagreement(runtimes: list[str], reference: str, sets: list[dict], epsilons: Iterable[float],
                       predictions: Callable[[str, str], torch.Tensor]) -> list[DiffCell]:
    """Cells for every deployment x budget x search stage: a sample counts once the two runtimes' labels differ on
    x or on any stored example of the cascade so far (from stored sets only, so the same code re-scores)."""
    cells = []
    for runtime in runtimes:
        clean = predictions(runtime, "x") != predictions(reference, "x")
        for eps in epsilons:
            split = clean.clone()
            for s in sorted((s for s in sets if s["source"] == runtime and abs(s["eps"] - eps) < 1e-12),
                            key=lambda s: s["stage"]):
                split |= predictions(runtime, s["key"]) != predictions(reference, s["key"])
                cells.append(DiffCell(runtime, reference, s["attack"], eps, percent(clean), percent(split),
                                      int((split & ~clean).sum()), split.nonzero().flatten().tolist()))
    return cells
