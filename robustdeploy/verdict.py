"""The answer at a glance: per deployment of a bundle, is it as robust as the training graph, and where does it
differ? Read off result files (evaluate, compare, check, detector, diff), never measured here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robustdeploy.evaluation.results import Result
from robustdeploy.evaluation.score import pick
from robustdeploy.thresholds import wilson


@dataclass
class Drop:
    """The worst-case robust accuracy drop (points, torch minus deployment) at one budget."""

    eps: float
    points: float
    threat: str
    source: str  # the result file it was read from


@dataclass
class Verdict:
    """One deployment of one bundle, gathered over every result that measured it."""

    deployment: str
    agreement: tuple[float, int, int] | None = None  # (percent, agreeing samples, samples)
    clean_drop: float | None = None
    drops: dict[float, Drop] = field(default_factory=dict)
    differing: dict[str, int] = field(default_factory=dict)  # result file -> samples whose outcome differs
    detector: list[str] = field(default_factory=list)
    gate: list[str] = field(default_factory=list)  # 'PASSED' / 'FAILED' / 'UNRESOLVED' per gate item
    gate_failed: bool = False  # whether an item fails as measured (what sets check's exit code)

    def headline(self) -> str:
        """One phrase: the gate's verdict where a check ran, else whether anything differs from torch."""
        if "FAILED" in self.gate:
            return "gate FAILED"
        if "UNRESOLVED" in self.gate:
            measured = "fails" if self.gate_failed else "passes"
            return f"gate UNRESOLVED: {measured} as measured, too few samples to be sure"
        worse = [d for d in self.drops.values() if d.points > 0] + ([1] if (self.clean_drop or 0) > 0 else [])
        if worse or sum(self.differing.values()):
            return "gate PASSED, differs from torch" if self.gate else "differs from torch"
        return "gate PASSED" if self.gate else "matches torch on what was measured"

    def cells(self) -> dict[str, str]:
        """The verdict as text, column by column."""
        agree = "-"
        if self.agreement:
            percent, agreed, n = self.agreement
            low, high = wilson(agreed, n)
            agree = f"{percent:.2f}% of {n} (95%: {low:.1f}-{high:.1f})"
        robust = "; ".join(f"eps={d.eps:g}: {d.points:+.2f} pts ({d.threat})" for d in
                           sorted(self.drops.values(), key=lambda d: d.eps)) or "-"
        gate = ", ".join(f"{self.gate.count(s)} {s}" for s in ("PASSED", "FAILED", "UNRESOLVED") if s in self.gate)
        return {"deployment": self.deployment, "verdict": self.headline(), "agreement with torch": agree,
                "clean drop": "-" if self.clean_drop is None else f"{self.clean_drop:+.2f} pts",
                "worst-case robust drop": robust,
                "samples differing": ", ".join(f"{k} in {f}" for f, k in self.differing.items()) or "-",
                "detector parity": "; ".join(self.detector) or "-", "gate": gate or "not run"}


VERDICT_HEADERS = ["deployment", "verdict", "agreement with torch", "clean drop", "worst-case robust drop",
                   "samples differing", "detector parity", "gate"]


def verdicts(loaded: list[tuple[Path, Result]]) -> dict[str, list[Verdict]]:
    """Per bundle name, a verdict for every deployment (runtime other than torch) any result measured."""
    found: dict[str, dict[str, Verdict]] = {}
    for path, result in loaded:
        own = found.setdefault(Path(result.bundle).name, {})
        for runtime in [r for r in result.runtime_labels() if r != "torch"]:
            _read(own.setdefault(runtime, Verdict(runtime)), runtime, path.name, result)
    return {bundle: list(v.values()) for bundle, v in found.items()}


def _read(verdict: Verdict, runtime: str, name: str, result: Result) -> None:
    cells = [c for c in result.cells if c.get("runtime") == runtime]
    if result.kind == "check":
        mine = [i for i in result.extra.get("items", []) if i["runtime"] == runtime]
        verdict.gate += [i.get("status") or ("PASSED" if i["passed"] else "FAILED") for i in mine]
        verdict.gate_failed |= not all(i["passed"] for i in mine)
    if result.scorer == "detect":
        flips = sum(len(c["decision_differs_from_torch"][k]) for c in cells for k in ("clean", "adversarial"))
        top = max((c["score_diff_vs_torch"]["max"] for c in cells), default=0.0)
        verdict.detector.append(f"{flips} decision flips, |score diff| max {top:.2g} ({name})")
        return
    if result.scorer == "diff":  # a disagreement search: samples it split from the reference, beyond clean splits
        split = max((c["found_beyond_clean"] for c in cells), default=0)
        if split:
            verdict.differing[name] = split
        return
    if not cells or "robust_accuracy" not in cells[0] or "torch" not in result.runtime_labels():
        return
    last = {(c["runtime"], c["eps"]): c for c in result.cells}  # cells run in cascade order: last = worst case
    first = cells[0]
    if verdict.agreement is None or result.samples > verdict.agreement[2]:
        agreed = result.samples - len(first["clean_differs_from_torch"])
        verdict.agreement = (100.0 * agreed / max(1, result.samples), agreed, result.samples)
        verdict.clean_drop = last["torch", first["eps"]]["clean_accuracy"] - first["clean_accuracy"]
    for eps in sorted({c["eps"] for c in cells}):
        mine, ref = last[runtime, eps], last.get(("torch", eps))
        if ref is None:
            continue
        points = ref["robust_accuracy"] - mine["robust_accuracy"]
        if eps not in verdict.drops or points > verdict.drops[eps].points:
            verdict.drops[eps] = Drop(eps, points, mine.get("threat") or _threat(result, runtime, eps), name)
    differing = set().union(*(c["outcome_differs_from_torch"] for c in cells))
    if differing:
        verdict.differing[name] = len(differing)


def _threat(result: Result, runtime: str, eps: float) -> str:
    """Where a cell's examples came from, for results written before cells carried their threat label."""
    sources = sorted({s["source"] for s in pick(result.sets, runtime, eps)})
    if sources == [runtime]:
        return "deployment-in-the-loop"
    return ", ".join(f"transfer from {s}" if s != runtime else "on the deployment" for s in sources) or "-"
