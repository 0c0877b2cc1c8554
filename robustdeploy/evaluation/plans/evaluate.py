"""`evaluate`: an attack cascade at a set of budgets, crafted once, scored on every runtime side by side; sets are
saved as they are crafted, so `resume=True` continues an interrupted run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from robustdeploy.attacks import cascade
from robustdeploy.evaluation import checks, shards
from robustdeploy.evaluation.classify import classify, finish, new_result, write_figure
from robustdeploy.evaluation.craft import Plan, with_surrogate
from robustdeploy.evaluation.results import Result
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.io import exclusive_outputs


@dataclass(frozen=True)
class EvalConfig(SessionConfig):
    attacks: tuple[str, ...] = ("pgd",)
    epsilons: tuple[float, ...] = (0.1,)
    attack_params: dict = field(default_factory=dict)
    out: Path | None = None
    resume: bool = False
    realise: bool = True
    surrogate: Path | None = None  # craft gradient attacks on this bundle's PyTorch graph (a transfer attack)
    deployment_loop: str = "auto"  # craft.LOOPS: where gradient attacks also run with the runtime deciding success

    def plan(self) -> Plan:
        return Plan(cascade(self.attacks, self.attack_params), self.epsilons, self.realise,
                    deployment_loop=self.deployment_loop)


def default_out(bundle_name: str, attacks: tuple[str, ...]) -> Path:
    return Path("results") / f"{bundle_name}-{'+'.join(a.replace(':', '-') for a in attacks)}.json"


@exclusive_outputs
def evaluate(config: EvalConfig) -> Result:
    """Run the cascade on every runtime it applies to; score every runtime; checks, figure, one result file.
    Under torchrun each rank does its shard and rank 0 writes the result (other ranks return their shard's)."""
    group = shards.join(config.device)
    session = open_session(replace(config, device=group.device(config.device)))
    out = Path(config.out) if config.out else default_out(session.bundle.name, config.attacks)
    result = new_result("evaluate", session)
    plan = config.plan()
    if config.surrogate is not None:
        plan = with_surrogate(plan, session, config.surrogate)
        result.extra["surrogate"] = {"bundle": str(config.surrogate), "source": plan.source}
    scored = classify(result, session, [plan], out, config.resume, group)
    if scored is None:
        return result
    result.checks += [asdict(c) for c in checks.for_cells(result.cells, result.attacks, result.norm or "linf",
                                                          math.prod(session.samples.shape)) if c is not None]
    result.figure = write_figure(out.with_suffix(".png"), scored.shown, scored.examples, result)
    result.complete = True
    finish(out, result, scored)
    return result
