"""`evaluate --detector`: the squeeze detector on every runtime, against the evaluation's own (oblivious)
sets of any attack family and an adaptive attack through the detector; detection rate, FPR, ROC-AUC and
PyTorch-vs-deployment score drift, all from stored sets."""

from __future__ import annotations

import functools
from dataclasses import asdict, replace
from pathlib import Path

import torch

from robustdeploy.attacks import AttackSpec
from robustdeploy.bundle import Bundle
from robustdeploy.defenses.detector_bundle import detector_section, open_detector, reference_detector
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezePGD, DetectorView
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.craft import Plan, Source, craft_budget
from robustdeploy.evaluation.evaluate import EvalConfig, default_out, new_result, run_plans
from robustdeploy.evaluation.grid import OnGrid
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.score import percent, pick, predictions
from robustdeploy.evaluation.session import open_session
from robustdeploy.io import exclusive_outputs

ADAPTIVE = "adaptive"
WORST = "worst case"  # per sample, the best of every set for the attacker: what the detector must withstand


def open_detectors(bundle: Bundle, labels: list[str], device: str) -> dict:
    """The detector graph on torch and on each listed runtime (fp32 only)."""
    if any(":" in name for name in labels):
        raise RobustDeployError("--detector runs the fp32 detector graph; give runtimes without a :variant")
    detector_section(bundle)
    return {name: open_detector(bundle, name, device) for name in dict.fromkeys(("torch", *labels))}


def roc_auc(negatives: torch.Tensor, positives: torch.Tensor) -> float | None:
    """P(positive score > negative score) + 0.5 P(tie): the Mann-Whitney form of the ROC area."""
    if not len(negatives) or not len(positives):
        return None
    greater = (positives[:, None] > negatives[None, :]).double().mean()
    ties = (positives[:, None] == negatives[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def _cell(label: str, s: dict, y: torch.Tensor, clean: tuple, adv: tuple, ref_clean: tuple, ref_adv: tuple) -> dict:
    (clean_logits, clean_score, clean_flag), (adv_logits, adv_score, adv_flag) = clean, adv
    correct = clean_logits.argmax(1) == y
    success = correct & (adv_logits.argmax(1) != y)
    n = int(success.sum())
    diff = (torch.cat([clean_score, adv_score]) - torch.cat([ref_clean[1], ref_adv[1]])).abs().double()
    return {
        "runtime": label, "eps": s["eps"], "attack": s["attack"], "set": s["key"], "successful_adversarials": n,
        "detection_rate": percent(adv_flag, success) if n else None,
        "false_positive_rate": percent(clean_flag),
        "roc_auc": roc_auc(clean_score, adv_score[success]),
        "undetected_success_rate": percent(success & ~adv_flag, correct),
        "score_diff_vs_torch": {"max": float(diff.max()), "mean": float(diff.mean()),
                                "p99": float(diff.quantile(0.99))},
        "decision_differs_from_torch": {"clean": (clean_flag != ref_clean[2]).nonzero().flatten().tolist(),
                                        "adversarial": (adv_flag != ref_adv[2]).nonzero().flatten().tolist()},
    }


def detect_cells(result: Result, stored: dict[str, torch.Tensor], detectors: dict, batch_size: int) -> list[dict]:
    """One cell per runtime, budget and set that applies to it (each attack stage, and the adaptive attack)."""
    run = predictions({label: functools.partial(d.run, batch_size=batch_size) for label, d in detectors.items()},
                      stored)  # (runtime, key) -> (logits, score, flag), computed once
    cells, y = [], stored["y"]
    for label in result.runtime_labels():
        for eps in result.epsilons:
            sets = [s for group in dict.fromkeys(s["group"] for s in result.sets)
                    for s in pick([s for s in result.sets if s["group"] == group], label, eps)]
            for s in sets:
                cells.append(_cell(label, s, y, run(label, "x"), run(label, s["key"]), run("torch", "x"),
                                   run("torch", s["key"])))
            choice = _strongest([run(label, s["key"]) for s in sets], y)
            worst = {"key": "worst", "eps": eps, "attack": WORST}
            cells.append(_cell(label, worst, y, run(label, "x"), _gather([run(label, s["key"]) for s in sets], choice),
                               run("torch", "x"), _gather([run("torch", s["key"]) for s in sets], choice)))
    return cells


def _strongest(outputs: list[tuple], y: torch.Tensor) -> torch.Tensor:
    """Per sample, the set an attacker would send: one that fools undetected, else one that fools, else the first."""
    rank = torch.stack([(logits.argmax(1) != y).long() * (1 + (~flag).long()) for logits, _, flag in outputs])
    return rank.argmax(0)


def _gather(outputs: list[tuple], choice: torch.Tensor) -> tuple:
    """The outputs of the chosen set, sample by sample."""
    rows = torch.arange(len(choice))
    return tuple(torch.stack([o[k] for o in outputs])[choice, rows] for k in range(3))


@exclusive_outputs
def evaluate_detector(config: EvalConfig, adaptive: AdaptiveSqueezePGD) -> Result:
    """Craft the evaluation's cascade (oblivious: it does not know the detector) and the adaptive attack through
    the PyTorch detector at each budget; score both on every runtime's detector graph."""
    session = open_session(config)
    detectors = open_detectors(session.bundle, [r.label for r in session.runtimes], config.device)
    out = Path(config.out) if config.out else default_out(session.bundle.name, config.attacks)
    out = out if config.out else out.with_name(f"{out.stem}-detector.json")
    result = new_result("detector", session, scorer="detect")
    result.extra = {"detector": detector_section(session.bundle), "adaptive_attack": adaptive.params()}
    plan = replace(config.plan(), group="oblivious")
    stored = run_plans(result, session, [plan], out, config.resume)
    detector = DetectorView(reference_detector(session.bundle).to(config.device).eval())
    view = OnGrid(detector) if config.realise else detector  # gradients at the 8-bit image the detector receives
    adaptive = replace(adaptive, norm=result.norm, threshold=detector.threshold)
    spec, adaptive_plan = AttackSpec("squeeze-pgd"), Plan((), (), config.realise, group=ADAPTIVE)
    source = Source("torch", view, lambda z: detectors["torch"].run(z, session.batch_size)[0].argmax(1), stored)
    for eps in result.epsilons:
        new = craft_budget(session, adaptive_plan, 0, spec, adaptive, source, eps, source.robust([], session.test.y))
        result.sets.append(asdict(new))
    result.seconds["adaptive"] = round(sum(s["seconds"] for s in result.sets if s["group"] == ADAPTIVE), 4)
    result.cells = detect_cells(result, stored, detectors, session.batch_size)
    result.complete = True
    save_result(out, result, stored)
    return result
