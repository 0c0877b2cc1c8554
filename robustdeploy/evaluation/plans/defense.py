"""`defend-eval`: each defense attacked obliviously (crafted on an undefended classifier, as seeds 002/003 do)
and adaptively (through the defense: Athalye, Carlini and Wagner 2018; margin loss against distillation,
Carlini and Wagner 2017), scored on every runtime. Both are the same cascade (the chosen attack, then
APGD-DLR and APGD-T, as AutoAttack closes, Croce & Hein 2020); crafted on the undefended baseline it is also
the baseline's own white-box attack, so the verdict compares like with like: the defense under the adaptive
cascade against the baseline under the same cascade. For adversarial training the adaptive number is the
own-gradient one, which is the defense's claim."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from robustdeploy import devices
from robustdeploy.attacks import AttackSpec
from robustdeploy.attacks import predict as labels
from robustdeploy.attacks.spec import takes
from robustdeploy.bundle import Bundle
from robustdeploy.defenses.purify import adaptive_source
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.classify import classify_cells, new_result, run_plans
from robustdeploy.evaluation.craft import Plan
from robustdeploy.evaluation.plans.binarize import BinarizationConfig, run_binarization
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.score import predictions, score_cascade
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.io import exclusive_outputs
from robustdeploy.train import load_run

ADAPTIVE_LOSS = {"distillation": "margin"}
# close every cascade, as AutoAttack does: APGD on the scale-invariant DLR loss, then targeted over 9 classes
CLOSING = (AttackSpec("apgd", {"loss": "dlr"}, "apgd:dlr"), AttackSpec("apgd-t", {}, "apgd-t"))
BEYOND_BASELINE = 5.0  # accuracy points above the baseline, under the same adaptive cascade, that count as robust
OBLIVIOUS_ONLY_GAP = 10.0  # accuracy points lost from oblivious to adaptive that mark a defense as oblivious-only
BASELINE = "baseline"  # the runtime label of the undefended baseline's cells


@dataclass(frozen=True)
class DefenseEvalConfig(SessionConfig):
    baseline: Path | None = None
    attack: str = "pgd"
    eps: float = 0.1
    steps: int = 40
    binarization: bool = False  # also test the adaptive cascade on binarised classifiers (Zimmermann et al. 2022)
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


def cascade(config: DefenseEvalConfig, loss: str) -> tuple[AttackSpec, ...]:
    """`--attack` with the loss that suits the defense, then APGD-DLR and APGD-T (each once)."""
    knobs = {"steps": config.steps, "loss": loss, "norm": "linf"}
    first = AttackSpec(config.attack, {k: v for k, v in knobs.items() if k in takes(config.attack)})
    closing = [AttackSpec(s.name, {**s.params, "steps": config.steps}, s.label) for s in CLOSING]
    return (first, *[s for s in closing if s.label != first.label])


def defense_cells(result: Result, stored: dict[str, torch.Tensor], runners: dict, baseline) -> list[dict]:
    """Cells of every runtime (oblivious and adaptive groups) and of the baseline under the cascade crafted on it
    (runtime `baseline`): the scorer `rescore` reruns."""
    cells = classify_cells(result, stored, runners)
    predict = predictions({**runners, BASELINE: baseline}, stored)
    sets = [s for s in result.sets if s["group"] == "oblivious"]
    return cells + [asdict(c) for c in score_cascade([BASELINE], sets, result.epsilons, stored["y"], predict)]


def baseline_runner(bundle: Bundle, source: str, device: str, batch_size: int):
    """Labels of the undefended baseline named by `oblivious_source` (a run folder, `torch` or `classifier`)."""
    model, _ = oblivious_model(bundle, None if source in ("torch", "classifier") else Path(source))
    model = devices.place(model if model is not None else bundle.reference_model(), device)
    return lambda x: labels(model, x.to(device), batch_size).cpu()


def _worst(result: Result, runtime: str, group: str) -> dict:
    return [c for c in result.cells if c["runtime"] == runtime and c["attack"].split(":")[0] == group][-1]


def verdicts(result: Result) -> dict[str, str]:
    """Per runtime: does the defense beat the undefended baseline under the same adaptive cascade?"""
    base = _worst(result, BASELINE, "oblivious")["robust_accuracy"]
    found = {}
    for runtime in result.runtime_labels():
        adaptive = _worst(result, runtime, "adaptive")["robust_accuracy"]
        gap = _worst(result, runtime, "oblivious")["robust_accuracy"] - adaptive
        if adaptive - base >= BEYOND_BASELINE:
            found[runtime] = f"robust beyond the baseline (+{adaptive - base:.1f} points under the adaptive attack)"
        else:
            found[runtime] = "no robustness beyond the baseline" + \
                (" (resists oblivious attacks only)" if gap >= OBLIVIOUS_ONLY_GAP else "")
    return found


@exclusive_outputs
def evaluate_defense(config: DefenseEvalConfig) -> Result:
    """Clean, oblivious and adaptive accuracy of a defended bundle on each runtime, 8-bit realised."""
    if config.steps < 1:
        raise RobustDeployError(f"--steps must be at least 1, got {config.steps}")
    session = open_session(config)
    out = Path(config.out or Path("results") / f"{session.bundle.name}-defense.json")
    source_model, source = oblivious_model(session.bundle, config.baseline)
    defense = session.bundle.defense
    loss = ADAPTIVE_LOSS.get(defense, "ce")
    attacks = cascade(config, loss)
    plans = [Plan(attacks, (config.eps,), source=source, source_model=source_model, group="oblivious"),
             Plan(attacks, (config.eps,), group="adaptive", **adaptive_source(session.reference))]
    result = new_result("defense", session)
    stored = run_plans(result, session, plans, out, resume=False)
    result.extra.update({"defense": defense, "adaptive_loss": loss,
                         "oblivious_source": str(config.baseline) if config.baseline else source})
    baseline = baseline_runner(session.bundle, result.extra["oblivious_source"], config.device, config.batch_size)
    result.cells = defense_cells(result, stored, session.runners(), baseline)
    result.extra["verdicts"] = verdicts(result)
    if config.binarization:  # the adaptive cascade, through the defense, on the defended graph's own features
        result.extra["binarization"] = asdict(run_binarization(session, BinarizationConfig(
            bundle=config.bundle, seed=config.seed, device=config.device, eps=config.eps, attacks=attacks)))
    result.complete = True
    save_result(out, result, stored)
    return result
