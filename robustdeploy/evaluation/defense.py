"""`defend-eval`: each defense attacked obliviously (crafted on an undefended classifier, as seeds 002/003 do)
and adaptively (through the defense: Athalye, Carlini and Wagner 2018; margin loss against distillation,
Carlini and Wagner 2017), scored on every runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustdeploy.attacks import AttackSpec
from robustdeploy.attacks.spec import takes
from robustdeploy.bundle import Bundle
from robustdeploy.defenses.purify import adaptive_source
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.craft import Plan
from robustdeploy.evaluation.evaluate import classify_cells, new_result, run_plans
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.io import check_output
from robustdeploy.train import load_run

ADAPTIVE_LOSS = {"distillation": "margin"}
OBLIVIOUS_ONLY_GAP = 10.0  # accuracy points lost from oblivious to adaptive that mark a defense as oblivious-only


@dataclass(frozen=True)
class DefenseEvalConfig(SessionConfig):
    baseline: Path | None = None
    attack: str = "pgd"
    eps: float = 0.1
    steps: int = 40
    out: Path | None = None


def oblivious_model(bundle: Bundle, baseline: Path | None) -> tuple[torch.nn.Module | None, str]:
    """The undefended classifier the oblivious attacker sees (None: the bundle's own graph)."""
    if baseline is not None:
        model, record = load_run(baseline)
        if record.spec.input_shape != bundle.input_shape or record.spec.num_classes != bundle.spec.num_classes:
            raise RobustDeployError(f"--baseline {baseline} has input {record.spec.input_shape} and "
                                    f"{record.spec.num_classes} classes; the bundle needs {bundle.input_shape} "
                                    f"and {bundle.spec.num_classes}")
        return model, "baseline"
    if bundle.defense == "none":
        return None, "torch"
    if bundle.spec.extra.get("purifier"):
        return bundle.reference_model().classifier, "classifier"
    raise RobustDeployError(f"bundle {bundle.name!r} ({bundle.defense}) needs --baseline RUN_DIR: oblivious "
                            "attacks are crafted on an undefended classifier trained with `robustdeploy train`")


def _spec(config: DefenseEvalConfig, loss: str) -> AttackSpec:
    knobs = {"steps": config.steps, "loss": loss, "norm": "linf"}
    return AttackSpec(config.attack, {k: v for k, v in knobs.items() if k in takes(config.attack)})


def verdicts(result: Result) -> dict[str, str]:
    """Per runtime: does the defense hold under the adaptive attack?"""
    found = {}
    for runtime in result.runtime_labels():
        robust = {c["attack"].split(":")[0]: c["robust_accuracy"] for c in result.cells if c["runtime"] == runtime}
        gap = robust["oblivious"] - robust["adaptive"]
        found[runtime] = "resists oblivious attacks only" if gap >= OBLIVIOUS_ONLY_GAP else \
            "same under adaptive attack"
    return found


def evaluate_defense(config: DefenseEvalConfig) -> Result:
    """Clean, oblivious and adaptive accuracy of a defended bundle on each runtime, 8-bit realised."""
    if config.steps < 1:
        raise RobustDeployError(f"--steps must be at least 1, got {config.steps}")
    session = open_session(config)
    out = Path(config.out or Path("results") / f"{session.bundle.name}-defense.json")
    check_output(out, "--out")
    source_model, source = oblivious_model(session.bundle, config.baseline)
    defense = session.bundle.defense
    loss = ADAPTIVE_LOSS.get(defense, "ce")
    plans = [Plan((_spec(config, "ce"),), (config.eps,), source=source, source_model=source_model,
                  group="oblivious"),
             Plan((_spec(config, loss),), (config.eps,), group="adaptive", **adaptive_source(session.reference))]
    result = new_result("defense", session)
    stored = run_plans(result, session, plans, out, resume=False)
    result.cells = classify_cells(result, stored, session.runners())
    result.extra = {"defense": defense, "oblivious_source": str(config.baseline) if config.baseline else source,
                    "adaptive_loss": loss, "verdicts": verdicts(result)}
    result.complete = True
    save_result(out, result, stored)
    return result
