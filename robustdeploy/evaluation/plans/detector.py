"""`evaluate --detector`: the squeeze detector on every runtime, against the evaluation's own (oblivious)
sets of any attack family and an adaptive attack through the detector; detection rate, FPR, ROC-AUC and
PyTorch-vs-deployment score drift, all from stored sets. The adaptive sets do not depend on `--attack`: they
are crafted once per bundle, settings and budget into a cache beside the result (itself a re-scorable
result) and copied into every detector result that needs them."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from robustdeploy.attacks import AttackSpec
from robustdeploy.bundle import Bundle
from robustdeploy.defenses.detector_bundle import detector_section, open_detector, reference_detector
from robustdeploy.defenses.squeeze_attack import NAME, REVISION, AdaptiveSqueezeAttack, DetectorView
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.classify import new_result, run_plans
from robustdeploy.evaluation.craft import Plan, Source, craft_budget, describe
from robustdeploy.evaluation.grid import OnGrid
from robustdeploy.evaluation.plans.evaluate import EvalConfig, default_out
from robustdeploy.evaluation.results import Result, load_result, save_result
from robustdeploy.evaluation.score import percent, pick, predictions
from robustdeploy.evaluation.session import Session, open_session
from robustdeploy.io import check_output, exclusive_outputs

log = logging.getLogger("robustdeploy")
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


def adaptive_cache(folder: Path, session: Session, attack: AdaptiveSqueezeAttack, realise: bool) -> Path:
    """Where the adaptive sets for this bundle (its file hashes), split, seed and attack settings are kept."""
    key = {"files": session.bundle.manifest["files"], "data": session.header()["data"], "seed": session.config.seed,
           "limit": session.config.limit, "attack": attack.params(), "revision": REVISION, "realise": realise}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return folder / f"{session.bundle.name}-{NAME}-{digest}.json"


def adaptive_sets(session: Session, attack: AdaptiveSqueezeAttack, epsilons: list[float], realise: bool,
                  cache: Path, detectors: dict) -> tuple[list[dict], dict[str, torch.Tensor], list[float]]:
    """The adaptive attack's sets at `epsilons` and their tensors, and the budgets taken from `cache` as they
    were; missing budgets are crafted through the PyTorch detector (BPDA) and added to the cache."""
    x, y = session.test.x, session.test.y
    check_output(cache, "--out")  # shared by later runs on this bundle: held while it may be rewritten
    cached, found = load_result(cache) if cache.exists() else (None, {})
    stored = dict(found)  # budgets crafted now join the cached ones
    if cached is None or not (torch.equal(stored["x"], x) and torch.equal(stored["y"], y)):
        cached, stored = new_result("detector", session, scorer="detect"), {"x": x, "y": y}
        cached.extra = {"detector": detector_section(session.bundle), "adaptive_attack": attack.params()}
    reused = [eps for eps in epsilons if any(s["eps"] == eps for s in cached.sets)]
    view = DetectorView(session.place(reference_detector(session.bundle)))
    source = Source("torch", OnGrid(view) if realise else view,  # gradients at the 8-bit image it receives
                    lambda z: detectors["torch"].run(z, session.batch_size)[0].argmax(1), stored)
    plan, spec = Plan((AttackSpec(NAME),), (), realise, group=ADAPTIVE), AttackSpec(NAME)
    cached.attacks, cached.norm = describe(plan, [attack]), attack.norm
    for eps in (eps for eps in epsilons if eps not in reused):
        crafted = craft_budget(session, plan, 0, spec, attack, source, eps, source.robust([], y))
        cached.sets.append(asdict(crafted))
        log.info("%s: %d samples attacked in %.1f s", crafted.key, crafted.attacked, crafted.seconds)
    cached.runtimes, cached.epsilons = session.header()["runtimes"], sorted({s["eps"] for s in cached.sets})
    cached.cells, cached.complete = detect_cells(cached, stored, detectors, session.batch_size), True
    save_result(cache, cached, stored)
    sets = [s for s in cached.sets if s["eps"] in epsilons]
    return sets, {s["key"]: stored[s["key"]] for s in sets}, reused


@exclusive_outputs
def evaluate_detector(config: EvalConfig, adaptive: AdaptiveSqueezeAttack) -> Result:
    """Craft the evaluation's cascade (oblivious: it does not know the detector) and take the adaptive attack
    through the PyTorch detector at each budget (from the cache when it was crafted before); score both on
    every runtime's detector graph."""
    session = open_session(config)
    detectors = open_detectors(session.bundle, [r.label for r in session.runtimes], config.device)
    out = Path(config.out) if config.out else default_out(session.bundle.name, config.attacks)
    out = out if config.out else out.with_name(f"{out.stem}-detector.json")
    result = new_result("detector", session, scorer="detect")
    plan = replace(config.plan(), group="oblivious")
    stored = run_plans(result, session, [plan], out, config.resume)
    adaptive = replace(adaptive, norm=result.norm, threshold=detector_section(session.bundle)["threshold"])
    cache = adaptive_cache(out.parent, session, adaptive, config.realise)
    sets, tensors, reused = adaptive_sets(session, adaptive, result.epsilons, config.realise, cache, detectors)
    result.sets += sets
    stored.update(tensors)
    result.extra.update({"detector": detector_section(session.bundle), "adaptive_attack": adaptive.params(),
                         "adaptive_cache": cache.name, "adaptive_reused": reused})
    result.seconds["adaptive"] = round(sum(s["seconds"] for s in sets), 4)
    result.cells = detect_cells(result, stored, detectors, session.batch_size)
    result.complete = True
    save_result(out, result, stored)
    return result
