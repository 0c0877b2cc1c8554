"""`check`, the CI gate: clean accuracy drop, top-1 agreement, worst-case robust accuracy drop and disagreement
within a small eps-ball (a differential search under a fixed query budget) of every deployment against the PyTorch
graph, with Markdown, JUnit and the re-scorable results."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from robustdeploy.attacks import AttackSpec
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.classify import agreement, classify, finish, new_result, write_figure
from robustdeploy.evaluation.craft import COMPARED, Plan
from robustdeploy.evaluation.plans.binarize import BinarizationConfig, run_binarization
from robustdeploy.evaluation.plans.compare import default_runtimes
from robustdeploy.evaluation.plans.diff import check_diff, diff_into
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.io import atomic_write_bytes, atomic_write_text, check_outputs, exclusive_outputs
from robustdeploy.report import table
from robustdeploy.thresholds import (
    MAX_ACCURACY_DROP,
    MAX_DISAGREEMENT,
    MAX_ROBUST_DROP,
    discordant,
    min_agreement,
    paired_drop,
    resolve,
    samples_to_resolve,
    wilson,
)

# A small fixed cascade: cheap enough for every CI run, strong enough to expose a robustness gap.
DEFAULT_ATTACKS = (AttackSpec("fgsm"), AttackSpec("pgd", {"steps": 10}))


@dataclass(frozen=True)
class CheckConfig(SessionConfig):
    runtimes: tuple[str, ...] = ()  # default: every variant of the bundle on ort-cpu
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # points
    min_agreement: float | None = None  # percent; default per precision (robustdeploy.thresholds, as export's)
    max_robust_drop: float = MAX_ROBUST_DROP  # points
    attacks: tuple[AttackSpec, ...] = DEFAULT_ATTACKS
    epsilons: tuple[float, ...] = (0.05,)
    diff_eps: float | None = 0.01  # budget of the disagreement check (None: no check); 2 grid steps
    diff_budget: int = 2  # deployment queries per sample: one gradient-guided walk (2 per walk), see README
    max_disagreement: float = MAX_DISAGREEMENT  # percent of samples split from torch within diff_eps
    binarization: bool = False  # also run the binarization test (Zimmermann et al. 2022) with the cascade
    min_binarization_success: float = 95.0  # percent of binarised samples the cascade must fool
    markdown: Path | None = None
    junit: Path | None = None
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop < 0 or self.max_robust_drop < 0:
            raise RobustDeployError("--max-accuracy-drop and --max-robust-drop are points >= 0")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 100:
            raise RobustDeployError("--min-agreement is a percentage in [0, 100]")
        if not 0 <= self.max_disagreement <= 100:
            raise RobustDeployError("--max-disagreement is a percentage in [0, 100]")


@dataclass(frozen=True)
class CheckItem:
    """One verdict: `passed` on the measured value; `status` also weighs its 95 % interval [low, high] on the
    `samples` used (UNRESOLVED: the count cannot tell which side of the limit the deployment is on)."""

    runtime: str
    check: str
    measured: float
    limit: float
    passed: bool
    detail: str
    low: float | None = None
    high: float | None = None
    samples: int | None = None
    status: str = ""


def _item(runtime: str, check: str, measured: float, limit: float, at_least: bool, detail: str,
          interval: tuple[float, float], n: int, drop: bool = False) -> CheckItem:
    """A verdict with its interval; an unresolved one says how many samples would resolve it."""
    passed = measured >= limit if at_least else measured <= limit
    status = resolve(*interval, limit, at_least)
    if status == "UNRESOLVED":
        need = samples_to_resolve(limit, at_least, drop)
        detail += (f"; UNRESOLVED on {n} samples (95% interval {interval[0]:.2f} to {interval[1]:.2f}"
                   + (f"; a perfect result needs >= {need} samples)" if need > n else ")"))
    return CheckItem(runtime, check, measured, limit, passed, detail, round(interval[0], 4), round(interval[1], 4), n,
                     status)


def items(result: Result, config: CheckConfig) -> list[CheckItem]:
    """The verdicts, read off the result's cells and agreement."""
    found, cascade = [], "+".join(a["label"] for a in result.attacks)
    last = {(c["runtime"], c["eps"]): c for c in result.cells}  # the last attack of each cascade: the worst case
    for runtime in [r for r in result.runtime_labels() if r != "torch"]:
        agreement, n = result.extra["agreement_with_torch"][runtime], result.samples
        least = config.min_agreement if config.min_agreement is not None else min_agreement(runtime)
        agreed = n - len(last[runtime, result.epsilons[0]]["clean_differs_from_torch"])
        found.append(_item(runtime, "top-1 agreement", agreement, least, True,
                           f"{agreement:.2f}% of predictions match torch (min {least:g}%)", wilson(agreed, n), n))
        drops = [("clean accuracy drop", "clean_accuracy", "clean_differs_from_torch", result.epsilons[0],
                  config.max_accuracy_drop, ""),
                 *[(f"robust accuracy drop eps={e:g}", "robust_accuracy", "outcome_differs_from_torch", e,
                    config.max_robust_drop, f" worst case over {cascade} at eps={e:g}") for e in result.epsilons]]
        for name, key, differing, eps, limit, what in drops:
            ref, value = last["torch", eps][key], last[runtime, eps][key]
            interval = paired_drop(*discordant(ref - value, len(last[runtime, eps][differing]), n), n)
            found.append(_item(runtime, name, ref - value, limit, False, f"torch {ref:.2f}% -> {value:.2f}%{what} "
                               f"(drop {ref - value:.2f} points, max {limit:g})", interval, n, drop=True))
    return found


def diff_items(result: Result, config: CheckConfig) -> list[CheckItem]:
    """The disagreement verdicts, read off a diff result's cells."""
    found = []
    for c in result.cells:
        found.append(_item(c["runtime"], f"disagreement eps={c['eps']:g}", c["disagreement"],
                           config.max_disagreement, False,
                           f"{c['disagreement']:.2f}% of samples split from torch within eps={c['eps']:g} "
                           f"({c['found_beyond_clean']} beyond the clean split; {c['search']} search, "
                           f"{result.extra['budget']} queries per sample; max {config.max_disagreement:g}%)",
                           wilson(len(c["disagreeing"]), result.samples), result.samples))
    return found


def binarization_item(session, config: CheckConfig, result: Result) -> CheckItem:
    """Can the check's cascade find an adversarial example where one surely exists (at the first budget)?"""
    report = run_binarization(session, BinarizationConfig(
        bundle=config.bundle, seed=config.seed, device=config.device, attacks=config.attacks,
        eps=config.epsilons[0], min_success=config.min_binarization_success))
    result.extra["binarization"] = asdict(report)
    return CheckItem("torch", f"binarization test eps={report.eps:g}", report.success, report.min_success,
                     report.passed, report.line().split(": ", 1)[1])


@exclusive_outputs
def run_check(config: CheckConfig) -> tuple[Result, list[CheckItem]]:
    """Measure clean accuracy drop, agreement and worst-case robust accuracy drop of each deployment."""
    bundle = load_bundle(config.bundle)
    names = config.runtimes or tuple(n for n in default_runtimes(bundle) if n != "torch")
    if "torch" in names:
        raise RobustDeployError("check compares deployments with the torch graph; drop --runtime torch")
    if config.diff_eps is not None:
        check_diff(names, "torch", (config.diff_eps,), config.diff_budget, ("gradient",))
    session = open_session(replace(config, runtimes=("torch", *names)), bundle)
    out = Path(config.out) if config.out else Path("results") / f"{bundle.name}-check.json"
    check_outputs((config.markdown, "--markdown"), (config.junit, "--junit"), (out, "--out"),
                  (out.with_suffix(".diff.json") if config.diff_eps is not None else None, "--out"))
    result = new_result("check", session)
    plan = Plan(config.attacks, config.epsilons, deployment_loop=COMPARED)
    scored = classify(result, session, [plan], out, resume=False)
    result.extra = {"agreement_with_torch": agreement(result)}
    found = items(result, config)
    if config.diff_eps is not None:  # its own re-scorable result beside the check's
        differ = new_result("diff", session, scorer="diff")
        kept = {"x": session.test.x, "y": session.test.y}
        diff_into(differ, session, kept, "torch", names, ("gradient",), (config.diff_eps,), config.diff_budget)
        differ.complete = True
        save_result(out.with_suffix(".diff.json"), differ, kept)
        result.extra["diff_result"] = out.with_suffix(".diff.json").name
        found += diff_items(differ, config)
    if config.binarization:
        found.append(binarization_item(session, config, result))
    result.extra["items"] = [asdict(i) for i in found]
    result.extra["passed"] = all(i.passed for i in found)
    result.figure = write_figure(out.with_suffix(".png"), scored.shown, scored.examples, result)
    result.complete = True
    finish(out, result, scored)
    if config.markdown:
        atomic_write_text(Path(config.markdown), markdown(result, found))
    if config.junit:
        atomic_write_bytes(Path(config.junit), junit(found))
    return result, found


def verdict(item: CheckItem) -> str:
    """PASSED / FAILED, or UNRESOLVED with the verdict on the measured value (which sets the exit code)."""
    point = "PASSED" if item.passed else "FAILED"
    return f"UNRESOLVED ({point.lower()} as measured)" if item.status == "UNRESOLVED" else point


def lines(found: list[CheckItem]) -> list[str]:
    """One line per item, led by the verdict that sets the exit code (its detail says when it is unresolved)."""
    return [f"{'PASSED' if i.passed else 'FAILED'} {i.runtime} {i.check}: {i.detail}" for i in found]


def markdown(result: Result, found: list[CheckItem]) -> str:
    headline = "✅ all checks passed" if all(i.passed for i in found) else "❌ some checks failed"
    head = f"## robustdeploy check: {headline}\n\nBundle `{result.bundle}`, {result.samples} test samples.\n\n"
    return head + table(ITEM_HEADERS, item_rows([asdict(i) for i in found]), markdown=True) + "\n"


ITEM_HEADERS = ["runtime", "check", "threshold", "measured", "95% interval", "n", "verdict"]


def item_rows(found: list[dict]) -> list[list]:
    """The gate's table: each item with its threshold, measured value and interval on the sample count."""
    return [[i["runtime"], i["check"], f"{'>=' if i['check'] == 'top-1 agreement' else '<='} {i['limit']:g}",
             f"{i['measured']:.2f}", "-" if i.get("low") is None else f"{i['low']:.2f} to {i['high']:.2f}",
             i.get("samples"), verdict(CheckItem(**i))] for i in found]


def junit(found: list[CheckItem]) -> bytes:
    failures = sum(not i.passed for i in found)
    suite = ET.Element("testsuite", name="robustdeploy.check", tests=str(len(found)), failures=str(failures),
                       errors="0")
    for item in found:
        case = ET.SubElement(suite, "testcase", classname=f"robustdeploy.{item.runtime}", name=item.check)
        if not item.passed:
            ET.SubElement(case, "failure", message=item.detail).text = item.detail
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)
