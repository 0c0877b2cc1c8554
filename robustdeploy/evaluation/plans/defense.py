"""`defend-eval`: each defense attacked obliviously (crafted on an undefended classifier, as seeds 002/003 do)
and adaptively (through the defense: Athalye, Carlini and Wagner 2018; margin loss against distillation,
Carlini and Wagner 2017), scored on every runtime. Both are the same cascade (the chosen attack, then
APGD-DLR and APGD-T, as AutoAttack closes, Croce & Hein 2020); crafted on the undefended baseline it is also
the baseline's own white-box attack, so the verdict compares like with like: the defense under the adaptive
cascade against the baseline under the same cascade. For adversarial training the adaptive number is the
own-gradient one, which is the defense's claim.

The verdict rests on a paired interval (issue 21): the per-sample outcomes of the defense under the adaptive
cascade and of the baseline under the same cascade, on the same samples, compared by a paired bootstrap; a gain
whose interval includes 0 is "inconclusive", and a clean-accuracy loss of more than CLEAN_COST points is named in
the same sentence as any gain."""

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
from robustdeploy.evaluation.paired import Paired, paired_difference
from robustdeploy.evaluation.plans.binarize import BinarizationConfig, run_binarization
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.score import pick, predictions, score_cascade
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.io import exclusive_outputs
from robustdeploy.train import load_run

ADAPTIVE_LOSS = {"distillation": "margin"}
# close every cascade, as AutoAttack does: APGD on the scale-invariant DLR loss, then targeted over 9 classes
CLOSING = (AttackSpec("apgd", {"loss": "dlr"}, "apgd:dlr"), AttackSpec("apgd-t", {}, "apgd-t"))
CLEAN_COST = 5.0  # clean accuracy points below the baseline's that a verdict names as the defense's cost
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


def outcomes(result: Result, stored: dict[str, torch.Tensor], runners: dict, baseline) -> dict[str, torch.Tensor]:
    """Per sample, robust or not: each runtime under the adaptive cascade, the baseline under the oblivious one
    (crafted on it: its own white-box cascade)."""
    predict = predictions({**runners, BASELINE: baseline}, stored)
    eps, y, found = result.epsilons[0], stored["y"], {}
    for runtime, group in [*((r, "adaptive") for r in result.runtime_labels()), (BASELINE, "oblivious")]:
        robust = predict(runtime, "x") == y
        for s in pick([s for s in result.sets if s["group"] == group], runtime, eps):
            robust = robust & (predict(runtime, s["key"]) == y)
        found[runtime] = robust
    return found


def verdict(paired: Paired, clean: float, base_clean: float, gap: float) -> str:
    """One sentence: beyond the baseline (interval above 0), none (at or below 0) or inconclusive, with the
    evidence, and the clean-accuracy cost when it exceeds CLEAN_COST points."""
    evidence = f"{paired.difference:+.1f} points under the adaptive attack, {paired.interval()}"
    cost = (f", at a cost of {base_clean - clean:.1f} points of clean accuracy ({clean:.1f}% vs the baseline's "
            f"{base_clean:.1f}%)" if base_clean - clean > CLEAN_COST else "")
    if paired.low > 0:
        return f"robust beyond the baseline ({evidence}){cost}"
    if paired.high <= 0:
        oblivious_only = "; resists oblivious attacks only" if gap >= OBLIVIOUS_ONLY_GAP else ""
        return f"no robustness beyond the baseline ({evidence}{oblivious_only}){cost}"
    return f"inconclusive: the interval includes 0 ({evidence}){cost}"


def verdicts(result: Result, robust: dict[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, dict]]:
    """Per runtime: does the defense beat the undefended baseline under the same adaptive cascade, on the same
    samples? The verdicts, and the paired comparisons they rest on."""
    base_clean = _worst(result, BASELINE, "oblivious")["clean_accuracy"]
    found, evidence = {}, {}
    for runtime in result.runtime_labels():
        paired = paired_difference(robust[runtime], robust[BASELINE], seed=result.seed)
        adaptive = _worst(result, runtime, "adaptive")
        gap = _worst(result, runtime, "oblivious")["robust_accuracy"] - adaptive["robust_accuracy"]
        found[runtime] = verdict(paired, adaptive["clean_accuracy"], base_clean, gap)
        evidence[runtime] = asdict(paired)
    return found, evidence


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
    robust = outcomes(result, stored, session.runners(), baseline)
    result.extra["verdicts"], result.extra["paired"] = verdicts(result, robust)
    if config.binarization:  # the adaptive cascade, through the defense, on the defended graph's own features
        result.extra["binarization"] = asdict(run_binarization(session, BinarizationConfig(
            bundle=config.bundle, seed=config.seed, device=config.device, eps=config.eps, attacks=attacks)))
    result.complete = True
    save_result(out, result, stored)
    return result
