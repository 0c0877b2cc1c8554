"""The squeeze detector on every runtime: detection rate, FPR, ROC-AUC and PyTorch-vs-deployment score drift,
for the oblivious attack (the normal `evaluate` examples) and the adaptive attack through the detector."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.defenses.detector_bundle import detector_section, open_detector, reference_detector
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezePGD
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluate import EvalConfig, default_out, evaluate
from robustdeploy.io import atomic_write_json, versions

RESULT_FORMAT = "robustdeploy-detector-evaluation/1"


@dataclass(frozen=True)
class DetectorEvalConfig:
    evaluation: EvalConfig
    adaptive: AdaptiveSqueezePGD = field(default_factory=AdaptiveSqueezePGD)


@dataclass(frozen=True)
class DetectionScore:
    """One runtime, one budget, one attack kind; rates in percent, indices into the evaluated test samples."""

    runtime: str
    eps: float
    attack: str
    successful_adversarials: int
    detection_rate: float
    false_positive_rate: float
    roc_auc: float
    undetected_success_rate: float
    score_diff_vs_torch: dict
    decision_differs_from_torch: dict


def roc_auc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """P(positive score > negative score) + 0.5 P(tie): the Mann-Whitney form of the ROC area."""
    if not len(negatives) or not len(positives):
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).double().mean()
    ties = (positives[:, None] == negatives[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs().double()
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(d.quantile(0.99))}


def _score(label: str, eps: float, kind: str, y: torch.Tensor, clean: tuple, adv: tuple, ref_clean: tuple,
           ref_adv: tuple) -> DetectionScore:
    (clean_logits, clean_score, clean_flag), (adv_logits, adv_score, adv_flag) = clean, adv
    correct = clean_logits.argmax(1) == y
    success = correct & (adv_logits.argmax(1) != y)
    n = int(success.sum())
    return DetectionScore(
        runtime=label, eps=eps, attack=kind, successful_adversarials=n,
        detection_rate=100.0 * float(adv_flag[success].float().mean()) if n else float("nan"),
        false_positive_rate=100.0 * float(clean_flag.float().mean()),
        roc_auc=roc_auc(clean_score, adv_score[success]),
        undetected_success_rate=100.0 * float((success & ~adv_flag).sum()) / max(1, int(correct.sum())),
        score_diff_vs_torch=_diff(torch.cat([clean_score, adv_score]), torch.cat([ref_clean[1], ref_adv[1]])),
        decision_differs_from_torch={
            "clean": (clean_flag != ref_clean[2]).nonzero().flatten().tolist(),
            "adversarial": (adv_flag != ref_adv[2]).nonzero().flatten().tolist(),
        },
    )


def evaluate_detector(config: DetectorEvalConfig) -> dict:
    """Oblivious examples from `evaluate`, adaptive ones crafted through the torch detector; score all on every
    runtime's detector graph. Writes `<out stem>-detector.json` and returns the same dict."""
    ev = config.evaluation
    bundle = load_bundle(ev.bundle)
    section = detector_section(bundle)
    if any(":" in name for name in ev.runtimes):
        raise RobustDeployError("--detector runs the fp32 detector graph; give runtimes without a :variant")
    detectors = [open_detector(bundle, name, ev.device) for name in dict.fromkeys(("torch", *ev.runtimes))]
    result = evaluate(ev)
    out = Path(ev.out) if ev.out else default_out(bundle, ev.attack)
    from safetensors.torch import load_file

    stored = load_file(str(out.with_suffix(".adv.safetensors")))
    x, y = stored["x"], stored["y"]
    reference = reference_detector(bundle).to(ev.device)
    outputs = {d.label: {"clean": d.run(x, ev.batch_size)} for d in detectors}
    scores, adaptive_seconds = [], {}
    for budget in result.budgets:
        start = time.perf_counter()
        torch.manual_seed(ev.seed)
        adaptive = torch.cat([config.adaptive.perturb(reference, x[i : i + ev.batch_size].to(ev.device),
                                                      y[i : i + ev.batch_size].to(ev.device), budget.eps).cpu()
                              for i in range(0, len(x), ev.batch_size)])
        adaptive_seconds[f"{budget.eps:g}"] = round(time.perf_counter() - start, 3)
        sets = {"oblivious": stored[f"eps={budget.eps:g}"], "adaptive": adaptive}
        for kind, adv in sets.items():
            ran = {d.label: d.run(adv, ev.batch_size) for d in detectors}
            for d in detectors:
                if d.label not in ev.runtimes:
                    continue
                scores.append(_score(d.label, budget.eps, kind, y, outputs[d.label]["clean"], ran[d.label],
                                     outputs["torch"]["clean"], ran["torch"]))
    report = {
        "format": RESULT_FORMAT, "bundle": str(bundle.path), "detector": section, "attack": ev.attack,
        "attack_params": result.attack_params, "adaptive_attack": asdict(config.adaptive),
        "adaptive_seconds": adaptive_seconds, "samples": len(x), "seed": ev.seed,
        "adversarial_file": out.with_suffix(".adv.safetensors").name,
        "scores": [asdict(s) for s in scores], "versions": versions(),
    }
    atomic_write_json(detector_out(out), report)
    return report


def detector_out(out: Path) -> Path:
    return out.with_name(f"{out.stem}-detector.json")


def detector_table(report: dict) -> str:
    """A terminal view: one line per runtime, budget and attack kind."""
    threshold = report["detector"]["threshold"]
    lines = [f"squeeze detector (threshold {threshold:.4g}, target FPR {report['detector']['target_fpr']:.0%}) "
             f"on {report['samples']} test samples",
             f"{'runtime':<10}{'eps':>7}  {'attack':<10}{'fooled':>7}{'detect%':>9}{'FPR%':>7}{'AUC':>7}"
             f"{'evade%':>8}{'|ds| max':>10}{'flips':>7}"]
    for s in report["scores"]:
        flips = sum(len(v) for v in s["decision_differs_from_torch"].values())
        lines.append(f"{s['runtime']:<10}{s['eps']:>7.3g}  {s['attack']:<10}{s['successful_adversarials']:>7}"
                     f"{s['detection_rate']:>9.1f}{s['false_positive_rate']:>7.1f}{s['roc_auc']:>7.3f}"
                     f"{s['undetected_success_rate']:>8.1f}{s['score_diff_vs_torch']['max']:>10.2e}{flips:>7}")
    return "\n".join(lines)
