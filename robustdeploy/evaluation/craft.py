"""The one place that crafts: capability matching, the attack and budget cascades (AutoAttack style), seeding
and 8-bit realisation. Gradient attacks run on a PyTorch source and transfer; score/decision attacks run on
each runtime; a minimal-norm attack runs once and is clipped per budget (foolbox 3's contract)."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from robustdeploy.attacks import (
    Attack,
    AttackSpec,
    DifferentialSearch,
    FixedBudgetAttack,
    MinimalNormAttack,
    check_eps,
    lp_norm,
    make_attack,
)
from robustdeploy.attacks import predict as labels
from robustdeploy.bundle import load_bundle
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.grid import LEVELS, ROUNDING, OnGrid, grid_budget, realise, rounding_report
from robustdeploy.evaluation.score import predictions
from robustdeploy.evaluation.session import Session
from robustdeploy.progress import heartbeat, progress
from robustdeploy.runtimes import Runtime


@dataclass
class CraftedSet:
    """One stored set of examples: attack stage, source it was crafted on, budget, and how it went."""

    key: str
    stage: int
    attack: str
    source: str
    eps: float | None  # None: a minimal-norm attack's unclipped examples
    attacked: int
    seconds: float
    gradients: int
    queries_mean: float | None = None
    queries_median: float | None = None
    rounding: dict | None = None
    group: str = ""
    iterations_mean: float | None = None  # an iterative query-based attack's iterations per sample (HopSkipJump)


@dataclass
class Plan:
    """What to craft: a cascade of attacks at a set of budgets, on the 8-bit grid unless `realise` is off."""

    attacks: tuple[AttackSpec, ...]
    epsilons: tuple[float, ...]
    realise: bool = True
    source: str = "torch"  # name of the gradient source: the bundle's PyTorch graph unless `source_model`
    source_model: torch.nn.Module | None = None  # a gradient source other than the bundle's reference
    group: str = ""  # names independent cascades stored side by side (e.g. oblivious / adaptive)


@dataclass
class Source:
    """Where an attack runs: the model it queries, and that model's labels on any stored set, computed once."""

    name: str
    model: Callable
    labels_of: Callable[[torch.Tensor], torch.Tensor]
    stored: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.on = functools.partial(predictions({self.name: self.labels_of}, self.stored), self.name)

    def robust(self, keys: list[str], y: torch.Tensor) -> torch.Tensor:
        """Samples it classifies correctly, clean and on every set stored under `keys`."""
        ok = self.on("x") == y
        for key in keys:
            ok &= self.on(key) == y
        return ok


@dataclass
class Crafted:
    """The sets crafted for a plan (their tensors are in the store under their keys) and minimal-norm norms."""

    epsilons: tuple[float, ...]
    sets: list[CraftedSet] = field(default_factory=list)
    norms: dict[str, list[float | None]] = field(default_factory=dict)


def set_key(attack: str, source: str, eps: float | None) -> str:
    """`[group:]attack/source/eps=E` (`.../minimal` for a minimal-norm attack's unclipped examples)."""
    return f"{attack}/{source}/" + ("minimal" if eps is None else f"eps={eps:g}")


def describe(plan: Plan, attacks: list[Attack]) -> list[dict]:
    return [{"label": label(plan, s), "name": s.name, "params": a.params(), "needs": a.needs.name.lower()}
            for s, a in zip(plan.attacks, attacks)]


def label(plan: Plan, spec: AttackSpec) -> str:
    return f"{plan.group}:{spec.label}" if plan.group else spec.label


def build(plan: Plan, seed: int, dim: int) -> tuple[list[Attack], str]:
    """The plan's attacks, checked: one norm for the cascade, budgets inside the norm's range."""
    if not plan.attacks:
        raise RobustDeployError("give at least one --attack")
    labels = [a.label for a in plan.attacks]
    if len(set(labels)) != len(labels):
        raise RobustDeployError(f"an attack is listed twice in the cascade: {', '.join(labels)}")
    attacks = [make_attack(spec, seed) for spec in plan.attacks]
    norms = {a.norm for a in attacks}
    if len(norms) > 1:
        raise RobustDeployError(f"the attacks of one cascade must share a norm, got {', '.join(sorted(norms))}; "
                                "set --norm")
    norm = norms.pop()
    for eps in plan.epsilons:
        check_eps(eps, norm, dim)
    if not plan.epsilons and any(isinstance(a, FixedBudgetAttack) for a in attacks):
        raise RobustDeployError("give at least one --eps")
    return attacks, norm


def require_gradient_source(session: Session, plan: Plan, attacks: list[Attack]) -> None:
    """Refuse gradient attacks on a score-only bundle (no PyTorch graph) unless a surrogate supplies the gradients."""
    needing = [s.label for s, a in zip(plan.attacks, attacks) if a.needs >= Capability.GRADIENTS]
    if needing and plan.source_model is None and session.bundle.score_only:
        raise RobustDeployError(f"bundle {session.bundle.name!r} is score-only (its ONNX graph has no PyTorch twin), "
                                f"so {', '.join(needing)} cannot compute gradients on it; use a black-box attack on "
                                "the deployment (--attack square or --attack hopskipjump) or transfer from another "
                                "bundle (--surrogate BUNDLE)")


def with_surrogate(plan: Plan, session: Session, surrogate: Path) -> Plan:
    """`plan` with its gradient attacks crafted on another bundle's PyTorch graph: a transfer attack."""
    other = load_bundle(surrogate)
    if other.input_shape != session.bundle.input_shape or len(other.classes) != len(session.bundle.classes):
        raise RobustDeployError(f"--surrogate {surrogate} takes {list(other.input_shape)} and has "
                                f"{len(other.classes)} classes, the bundle {list(session.bundle.input_shape)} and "
                                f"{len(session.bundle.classes)}; use a surrogate trained on the same task")
    if other.score_only:
        raise RobustDeployError(f"--surrogate {surrogate} is score-only itself; use a bundle with a PyTorch graph")
    return replace(plan, source=f"surrogate:{other.name}", source_model=other.reference_model())


def craft(session: Session, plan: Plan, attacks: list[Attack], stored: dict[str, torch.Tensor],
          done: list[CraftedSet] | None = None, on_set: Callable[[Crafted], None] | None = None) -> Crafted:
    """Craft every set of `plan` (its `build` attacks) into `stored` (keys from `set_key`); sets listed in `done`
    are kept as they are, so an interrupted run resumes. `on_set` is called after each new set (to save it)."""
    require_gradient_source(session, plan, attacks)
    y = session.test.y
    crafted = Crafted(tuple(sorted(set(plan.epsilons))))
    finished = {s.key: s for s in done or [] if s.key in stored}
    gradient, runtimes = _sources(session, plan, stored)  # each caches its labels on every set across stages
    for stage, (spec, attack) in enumerate(zip(plan.attacks, attacks)):
        for source in [gradient] if attack.needs >= Capability.GRADIENTS else runtimes:
            earlier = [s for s in crafted.sets if s.source in (source.name, plan.source)]
            if isinstance(attack, MinimalNormAttack):
                _minimal(session, plan, stage, spec, attack, source, crafted, finished, on_set)
                continue
            previous: str | None = None
            for eps in crafted.epsilons:
                key = set_key(label(plan, spec), source.name, eps)
                if key in finished:
                    crafted.sets.append(finished[key])
                else:
                    keys = [s.key for s in earlier if s.eps == eps] + ([previous] if previous else [])
                    crafted.sets.append(craft_budget(session, plan, stage, spec, attack, source, eps,
                                                     source.robust(keys, y), previous))
                    if on_set:
                        on_set(crafted)
                previous = key
    return crafted


def _sources(session: Session, plan: Plan, stored: dict[str, torch.Tensor]) -> tuple[Source, list[Source]]:
    """Where attacks run: the gradient source (gradient attacks), and every runtime (score/decision attacks)."""
    model = session.place(plan.source_model if plan.source_model is not None else session.reference)
    gradient = Source(plan.source, model, lambda z: labels(model, z.to(session.device), session.batch_size).cpu(),
                      stored)
    return gradient, [Source(r.label, r.logits, functools.partial(r.predict, batch_size=session.batch_size), stored)
                      for r in session.runtimes]


def craft_budget(session: Session, plan: Plan, stage: int, spec: AttackSpec, attack: FixedBudgetAttack,
                 source: Source, eps: float, todo: torch.Tensor, previous: str | None = None) -> CraftedSet:
    """One budget of a fixed-budget attack on the samples in `todo`; the rest keep x or the example stored under
    `previous` (a smaller budget's)."""
    index = todo.nonzero().flatten()
    blackbox = attack.needs < Capability.GRADIENTS
    attack.realiser, attack.quantum = None, None
    if plan.realise:  # success judged on what the deployment receives; query-based attacks query only such images
        attack.realiser, attack.quantum = (lambda a, xb, e: realise(a, xb, e, attack.norm)), 1 / LEVELS
    view = OnGrid(source.model) if plan.realise and blackbox else source.model  # queries are 8-bit images
    budget = grid_budget(eps, attack.norm) if plan.realise and blackbox else eps
    queries: list[int] = []
    iterations: list[int] = []

    def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        adv = attack.perturb(view, xb, yb, budget)
        if attack.queries_per_sample is not None:
            queries.extend(attack.queries_per_sample.tolist())
        if attack.iterations_per_sample is not None:
            iterations.extend(attack.iterations_per_sample.tolist())
        return adv

    key = set_key(label(plan, spec), source.name, eps)
    start, before = time.perf_counter(), attack.stats.gradients
    raw = _batched(session, index, source.stored[previous or "x"], run, key,
                   lambda: f"{attack.stats.gradients - before} gradient evaluations so far")
    seconds = time.perf_counter() - start
    adv, rounding = _realised(plan, source, session, raw, index, eps, attack.norm)
    source.stored[key] = adv
    return CraftedSet(key, stage, label(plan, spec), source.name, eps, len(index), round(seconds, 4),
                      attack.stats.gradients - before,
                      round(statistics.fmean(queries), 2) if queries else None,
                      float(statistics.median(queries)) if queries else None, rounding, plan.group,
                      round(statistics.fmean(iterations), 2) if iterations else None)


def chunks(session: Session, index: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(global start, samples of `index` in it) per block of `batch_size` consecutive samples of the split: a
    sample's batch depends on its position only, not on which others are attacked or how the split is sharded."""
    size = session.batch_size
    for start in range(0, len(session.test), size):
        chunk = index[(index >= start) & (index < start + size)]
        if len(chunk):
            yield session.offset + start, chunk


def _batched(session: Session, index: torch.Tensor, base: torch.Tensor, call, desc: str,
             figures: Callable[[], str] | None = None) -> torch.Tensor:
    """`call(x, y)` over the samples in `index`, block by block on the session's device, each block seeded by its
    position; the others keep `base`. Progress is shown as `desc` (log lines per block when there are several,
    else a heartbeat line with `figures()` while the one block runs: the caller reports each finished set)."""
    x, y, out = session.test.x, session.test.y, base.clone()
    blocks = list(chunks(session, index))
    with heartbeat(desc, figures) if len(blocks) == 1 else contextlib.nullcontext():
        for i, _ in progress(len(blocks), desc, "batch", lines=10 if len(blocks) > 1 else 0, leave=False):
            start, chunk = blocks[i]
            torch.manual_seed(session.config.seed * 1_000_003 + start)
            out[chunk] = call(x[chunk].to(session.device), y[chunk].to(session.device)).detach().cpu()
    return out


def _realised(plan: Plan, source: Source, session: Session, raw: torch.Tensor, index: torch.Tensor,
              eps: float | None, norm: str) -> tuple[torch.Tensor, dict | None]:
    """The attacked samples rounded to the 8-bit grid inside eps, with the rounding report."""
    if not plan.realise:
        return raw, None
    x, y, adv = session.test.x, session.test.y, raw.clone()
    adv[index] = realise(raw[index], x[index], eps, norm)
    reports = [rounding_report(source.labels_of, raw[c], adv[c], y[c]) for _, c in chunks(session, index)]
    return adv, {k: sum(r[k] for r in reports) for k in ROUNDING}


def _minimal(session: Session, plan: Plan, stage: int, spec: AttackSpec, attack: MinimalNormAttack, source: Source,
             crafted: Crafted, finished: dict[str, CraftedSet], on_set) -> None:
    """Run a minimal-norm attack once on the samples the source gets right; clip it to each budget."""
    x, y, stored = session.test.x, session.test.y, source.stored
    whole = set_key(label(plan, spec), source.name, None)
    if whole not in finished:
        index = source.robust([], y).nonzero().flatten()
        start, before = time.perf_counter(), attack.stats.gradients
        view = OnGrid(source.model) if plan.realise else source.model  # straight-through: the norm is realised
        found = _batched(session, index, x, lambda xb, yb: attack.minimize(view, xb, yb), whole)
        seconds = time.perf_counter() - start
        adv, rounding = _realised(plan, source, session, found, index, None, attack.norm)
        stored[whole] = adv
        finished[whole] = CraftedSet(whole, stage, label(plan, spec), source.name, None, len(index), round(seconds, 4),
                                     attack.stats.gradients - before, rounding=rounding, group=plan.group)
        crafted.sets.append(finished[whole])
        if on_set:
            on_set(crafted)
    elif finished[whole] not in crafted.sets:
        crafted.sets.append(finished[whole])
    adv = stored[whole]
    fooled, clean_ok = source.on(whole) != y, source.on("x") == y
    norms = torch.where(fooled & clean_ok, lp_norm(adv - x, attack.norm), torch.tensor(float("inf")))
    norms = torch.where(clean_ok, norms, torch.tensor(0.0))
    crafted.norms[f"{label(plan, spec)}/{source.name}"] = [None if n == float("inf") else n for n in norms.tolist()]
    if not crafted.epsilons:  # no --eps: the curve's points come from the first minimal-norm attack
        crafted.epsilons = _grid_from_norms(norms)
    for eps in crafted.epsilons:
        key = set_key(label(plan, spec), source.name, eps)
        if key not in stored:
            inside = (norms <= eps + 1e-7).view(-1, *[1] * (x.dim() - 1))
            stored[key] = torch.where(inside, adv, x)
        if key not in finished:
            finished[key] = CraftedSet(key, stage, label(plan, spec), source.name, eps, finished[whole].attacked,
                                       0.0, 0, group=plan.group)
        crafted.sets.append(finished[key])


def _grid_from_norms(norms: torch.Tensor) -> tuple[float, ...]:
    """Nine budgets from 0 to the largest norm found, for a minimal-norm run given no --eps."""
    finite = norms[torch.isfinite(norms)]
    top = float(finite.max()) if len(finite) and float(finite.max()) > 0 else 1.0
    return tuple(sorted({round(top * i / 8, 4) for i in range(9)}))


def craft_diff(session: Session, stage: int, name: str, search: DifferentialSearch, reference: Callable,
               deployment: Runtime, eps: float, budget: int, todo: torch.Tensor,
               stored: dict[str, torch.Tensor]) -> tuple[CraftedSet, torch.Tensor]:
    """One budget of a differential search of `deployment` against `reference` (a model on the 8-bit grid) on the
    samples in `todo`, the rest keeping x; returns the set and the samples the search claims split the two."""
    torch.manual_seed(session.config.seed)
    index = todo.nonzero().flatten()
    claimed = torch.zeros(len(session.test), dtype=torch.bool)
    queries: list[int] = []

    def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        outcome = search.search(reference, deployment.logits, xb, eps, budget, lambda a, x, e: realise(a, x, e, "linf"))
        queries.extend(outcome.queries.tolist())
        found.append(outcome.found.cpu())
        return outcome.adv

    found: list[torch.Tensor] = []
    key = set_key(name, deployment.label, eps)
    start, before = time.perf_counter(), search.gradients
    adv = _batched(session, index, session.test.x, run, key)
    if found:
        claimed[index] = torch.cat(found)
    stored[key] = adv
    return CraftedSet(key, stage, name, deployment.label, eps, len(index), round(time.perf_counter() - start, 4),
                      search.gradients - before, round(statistics.fmean(queries), 2) if queries else None,
                      float(statistics.median(queries)) if queries else None), claimed
