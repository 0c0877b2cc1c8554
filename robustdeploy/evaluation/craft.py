"""The one place that crafts: capability matching, the attack and budget cascades (AutoAttack style), seeding
and 8-bit realisation. Gradient attacks run on a PyTorch source and transfer, and, wherever a runtime differs from
the graph the gradients come from, again with the deployment in the loop (gradients from the variant's PyTorch twin,
success judged by the runtime itself); score/decision attacks run on each runtime; a minimal-norm attack runs once
and is clipped per budget (foolbox 3's contract)."""

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
from robustdeploy.attacks.base import IterativeGradientAttack
from robustdeploy.bundle import load_bundle
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.grid import LEVELS, ROUNDING, OnGrid, grid_budget, realise, rounding_report
from robustdeploy.evaluation.score import predictions
from robustdeploy.evaluation.session import Session
from robustdeploy.progress import heartbeat, progress
from robustdeploy.runtimes import Runtime
from robustdeploy.twins import make_twin

LOOPS = ("auto", "all", "off")
# The loop of the plans that compare deployments with each other (check, compare, quantize): the fp32 deployment
# gets its own in-the-loop set too, so every deployment faces the same attack (torch's sets plus one of its own) and
# a drop is no artefact of one more attack (under `auto` a timm resnet's int8 candidate with every quantisable node
# kept fp32 read 2.5 points below fp32).
COMPARED = "all"


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
    threat: str = ""  # how it was crafted, on its own source: see `threat_of`
    twin: dict | None = None  # a deployment-in-the-loop set's gradient graph and its parity with the runtime
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
    transfer: bool = False  # `source_model` is another model than the deployment's (a surrogate): craft for transfer
    # Gradient attacks again per runtime with that runtime deciding success (gradients from its twin): `auto` where
    # the runtime's graph differs from the gradient source's (a precision variant; every runtime for a surrogate),
    # `all` on every runtime but the source itself, `off` for plain transfer only.
    deployment_loop: str = "auto"


@dataclass
class Source:
    """Where an attack runs: the model it queries, and that model's labels on any stored set, computed once."""

    name: str
    model: Callable
    labels_of: Callable[[torch.Tensor], torch.Tensor]
    stored: dict[str, torch.Tensor]
    judge: Callable | None = None  # the deployment deciding success (deployment in the loop)
    transfer: bool = False  # crafted to transfer: no early stop on the source, every budget on its own
    twin: dict | None = None  # where a judge decides: the gradient graph and its parity with the judge

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
    if plan.deployment_loop not in LOOPS:
        raise RobustDeployError(f"unknown --deployment-loop {plan.deployment_loop!r}; use {', '.join(LOOPS)}")
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
    return replace(plan, source=f"surrogate:{other.name}", source_model=other.reference_model(), transfer=True)


def craft(session: Session, plan: Plan, attacks: list[Attack], stored: dict[str, torch.Tensor],
          done: list[CraftedSet] | None = None, on_set: Callable[[Crafted], None] | None = None) -> Crafted:
    """Craft every set of `plan` (its `build` attacks) into `stored` (keys from `set_key`); sets listed in `done`
    are kept as they are, so an interrupted run resumes. `on_set` is called after each new set (to save it)."""
    require_gradient_source(session, plan, attacks)
    y = session.test.y
    crafted = Crafted(tuple(sorted(set(plan.epsilons))))
    finished = {s.key: s for s in done or [] if s.key in stored}
    gradient, runtimes = _sources(session, plan, stored)  # each caches its labels on every set across stages
    loops = in_the_loop(session, plan, gradient) if any(map(_loopable, attacks)) else []
    for stage, (spec, attack) in enumerate(zip(plan.attacks, attacks)):
        for source in _where(attack, gradient, loops, runtimes):
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
                    todo = torch.ones_like(y, dtype=torch.bool) if source.transfer else source.robust(keys, y)
                    crafted.sets.append(craft_budget(session, plan, stage, spec, attack, source, eps, todo,
                                                     previous))
                    if on_set:
                        on_set(crafted)
                previous = None if source.transfer else key  # a transfer set crafts every budget on its own
    return crafted


def _where(attack: Attack, gradient: Source, loops: list[Source], runtimes: list[Source]) -> list[Source]:
    """The sources an attack runs on: a gradient attack on the gradient source (and in the loop of every runtime
    where one applies), a score/decision attack on every runtime."""
    if attack.needs < Capability.GRADIENTS:
        return runtimes
    return [gradient, *(loops if _loopable(attack) else [])]


def _loopable(attack: Attack) -> bool:
    """A gradient attack on classifier logits, which a runtime's logits can judge."""
    return isinstance(attack, IterativeGradientAttack) and attack.criterion is None


def in_the_loop(session: Session, plan: Plan, gradient: Source) -> list[Source]:
    """A deployment-in-the-loop source per runtime the plan's `deployment_loop` selects: gradients from the runtime
    variant's PyTorch twin (or from the surrogate), success judged by the runtime on what it receives."""
    if plan.deployment_loop == "off" or (plan.source_model is not None and not plan.transfer):
        return []  # a plan that picked its own gradient source (a baseline, a purifier's classifier) keeps it
    chosen = [r for r in session.runtimes if r.label != plan.source and
              (plan.deployment_loop == "all" or plan.transfer or r.spec.variant != "fp32")]
    twins: dict[str, tuple[Callable, str]] = {}
    sources = []
    for runtime in chosen:
        variant = runtime.spec.variant
        if variant not in twins:
            twin = None if plan.transfer else make_twin(session.bundle, variant, session.reference)
            twins[variant] = (gradient.model, plan.source) if twin is None else (session.place(twin.model), twin.how)
        model, how = twins[variant]
        sources.append(Source(runtime.label, model, functools.partial(runtime.predict, batch_size=session.batch_size),
                              gradient.stored, judge=runtime.logits, twin={"gradients": how,
                                                                           **twin_parity(session, model, runtime)}))
    return sources


def twin_parity(session: Session, model: torch.nn.Module, runtime: Runtime) -> dict:
    """How closely a gradient graph follows the runtime it stands in for, on the clean samples: top-1 agreement (%)
    and the largest and mean absolute logit difference."""
    x = session.test.x
    with torch.no_grad():
        twin = torch.cat([model(x[i : i + session.batch_size].to(session.device)).float().cpu()
                          for i in range(0, len(x), session.batch_size)])
    deployed = runtime.logits(x, session.batch_size)
    gap = (twin - deployed).abs()
    return {"samples": len(x), "agreement": round(100.0 * float((twin.argmax(1) == deployed.argmax(1)).float().mean()),
                                                  4), "max_abs": float(gap.max()), "mean_abs": float(gap.mean())}


def threat_of(plan: Plan, source: Source, needs: Capability) -> str:
    """The threat model of a set on its own source: `white-box on R`, `deployment-in-the-loop on R`,
    `score-based on R`, `decision-based on R`, or `transfer from X` for a surrogate's set (no runtime is X)."""
    crafted_on = source.name
    if plan.transfer and source.name == plan.source:
        return f"transfer from {crafted_on}"
    if source.judge is not None:
        return f"deployment-in-the-loop on {crafted_on}"
    kind = {Capability.GRADIENTS: "white-box", Capability.SCORES: "score-based"}.get(needs, "decision-based")
    return f"{kind} on {crafted_on}"


def _sources(session: Session, plan: Plan, stored: dict[str, torch.Tensor]) -> tuple[Source, list[Source]]:
    """Where attacks run: the gradient source (gradient attacks), and every runtime (score/decision attacks)."""
    model = session.place(plan.source_model if plan.source_model is not None else session.reference)
    gradient = Source(plan.source, model, lambda z: labels(model, z.to(session.device), session.batch_size).cpu(),
                      stored, transfer=plan.transfer or _plain_transfer(session, plan))
    return gradient, [Source(r.label, r.logits, functools.partial(r.predict, batch_size=session.batch_size), stored)
                      for r in session.runtimes]


def _plain_transfer(session: Session, plan: Plan) -> bool:
    """Whether the gradient source's sets are all some runtime gets (no loop, and its graph differs): then they are
    crafted for transfer."""
    return plan.deployment_loop == "off" and plan.source_model is None and \
        any(r.spec.variant != "fp32" for r in session.runtimes)


def craft_budget(session: Session, plan: Plan, stage: int, spec: AttackSpec, attack: FixedBudgetAttack,
                 source: Source, eps: float, todo: torch.Tensor, previous: str | None = None) -> CraftedSet:
    """One budget of a fixed-budget attack on the samples in `todo`; the rest keep x or the example stored under
    `previous` (a smaller budget's)."""
    index = todo.nonzero().flatten()
    blackbox = attack.needs < Capability.GRADIENTS
    attack.realiser, attack.quantum, attack.judge = None, None, source.judge
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
    stops = getattr(attack, "early_stop", None)
    if source.transfer and stops is not None:
        attack.early_stop = False  # the source being fooled says little about the target: run every step
    try:
        raw = _batched(session, index, source.stored[previous or "x"], run, key,
                       lambda: f"{attack.stats.gradients - before} gradient evaluations so far")
    finally:
        attack.judge = None
        if stops is not None:
            attack.early_stop = stops
    seconds = time.perf_counter() - start
    adv, rounding = _realised(plan, source, session, raw, index, eps, attack.norm)
    source.stored[key] = adv
    return CraftedSet(key, stage, label(plan, spec), source.name, eps, len(index), round(seconds, 4),
                      attack.stats.gradients - before,
                      round(statistics.fmean(queries), 2) if queries else None,
                      float(statistics.median(queries)) if queries else None, rounding, plan.group,
                      threat_of(plan, source, attack.needs), source.twin,
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
                                     attack.stats.gradients - before, rounding=rounding, group=plan.group,
                                     threat=threat_of(plan, source, attack.needs))
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
                                       0.0, 0, group=plan.group, threat=finished[whole].threat)
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
