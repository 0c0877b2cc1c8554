"""Terminal tables and Markdown from results: views of the data, never the data itself."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from robustdeploy.evaluation.checks import weak_blackbox


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """A plain aligned table (or a Markdown one) of already-formatted cells."""
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in headers) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


EVALUATION_HEADERS = ["eps", "runtime", "after attack", "clean %", "robust %", "success %", "queries",
                      "lost to rounding", "clean≠torch", "outcome≠torch", "threat model"]


def evaluation_table(result, markdown: bool = False) -> str:
    """One row per (budget, runtime, attack of the cascade): robust accuracy after that attack (the last row of
    each budget and runtime is the worst case), queries and examples lost to 8-bit rounding where they apply."""
    text = table(EVALUATION_HEADERS, evaluation_rows(result), markdown) + blackbox_notes(result)
    for name, norms in result.extra.get("norms", {}).items():
        found = [n for n in norms if n is not None and n > 0]
        if found:
            text += f"\n{name}: median norm {statistics.median(found):.4g}, mean {statistics.fmean(found):.4g} " \
                    f"over {len(found)} fooled samples ({sum(n is None for n in norms)} not fooled)"
    return text


def evaluation_rows(result) -> list[list]:
    """The rows of `evaluation_table`."""
    sets = {(s["attack"], s["source"], s["eps"]): s for s in result.sets}
    weak = weak_blackbox(result.cells, result.attacks)
    rows = []
    for c in sorted(result.cells, key=lambda c: c["eps"]):
        own = sets.get((c["attack"], c["runtime"], c["eps"])) or sets.get((c["attack"], "torch", c["eps"])) or {}
        flag = " (!)" if (c["runtime"], c["eps"], c["attack"]) in weak else ""
        rows.append([f"{c['eps']:g}", c["runtime"], c["attack"] + flag, c["clean_accuracy"], c["robust_accuracy"],
                     c["attack_success_rate"], own.get("queries_mean"), (own.get("rounding") or {}).get(
                         "stopped_fooling"), len(c["clean_differs_from_torch"]),
                     len(c["outcome_differs_from_torch"]), c.get("threat", "")])
    return rows


def blackbox_notes(result) -> str:
    """Lines under the table for query-based rows: flagged ones (`checks.weak_blackbox`), and where no gradient attack
    ran, that a score- or decision-based number is an upper bound on robust accuracy."""
    needs = {a["label"]: a["needs"] for a in result.attacks}
    lines = []
    if weak_blackbox(result.cells, result.attacks):
        lines.append("(!) the white-box attacks after this query-based attack fool far more of the samples it left "
                     "robust: its number alone overstates robustness")
    blackbox = [label for label, need in needs.items() if need != "gradients"]
    if blackbox and all(need != "gradients" for need in needs.values()):
        lines.append(f"{', '.join(blackbox)}: query-based, no gradient attack ran: robust accuracy is an upper bound "
                     "(a stronger attack may fool more)")
    return "".join("\n" + line for line in lines)


def defense_table(result) -> str:
    """One line per runtime (worst case over the cascade) and one for the undefended baseline."""
    extra = result.extra
    attacks = " + ".join(a["label"].split(":", 1)[1] for a in result.attacks if a["label"].startswith("adaptive:"))
    head = (f"{extra['defense']} | {attacks} {result.norm} eps={result.epsilons[0]:g}, {result.samples} "
            f"samples | oblivious: crafted on {extra['oblivious_source']} | adaptive: through the defense, "
            f"{extra['adaptive_loss']} loss | baseline: the undefended model under the same cascade")
    rows = []
    for runtime in [*result.runtime_labels(), "baseline"]:
        worst = {}
        for c in result.cells:
            if c["runtime"] == runtime:
                worst[c["attack"].split(":")[0]] = c
        adaptive = worst["adaptive"] if runtime != "baseline" else worst["oblivious"]
        rows.append([runtime, worst["oblivious"]["clean_accuracy"],
                     worst["oblivious"]["robust_accuracy"] if runtime != "baseline" else "",
                     adaptive["robust_accuracy"], extra["verdicts"].get(runtime, "")])
    found = head + "\n" + table(["runtime", "clean %", "oblivious %", "adaptive %", "verdict"], rows)
    return found + ("\n" + binarization_table(extra["binarization"]) if "binarization" in extra else "")


def binarization_table(report: dict) -> str:
    """The binarization test's verdict and each attack's success and AttackBench optimality."""
    head = (f"binarization test ({report['norm']} eps={report['eps']:g}): {report['success']:.1f}% of "
            f"{report['valid']} binarised samples fooled (min {report['min_success']:g}%): "
            f"{'PASSED' if report['passed'] else 'FAILED'}")
    rows = [[label, a["success"], a["optimality"], "" if a["mean_distance_to_best"] is None
             else f"{a['mean_distance_to_best']:.4f}"] for label, a in report["attacks"].items()]
    return head + "\n" + table(["attack", "success %", "optimality", "mean distance to best"], rows)


def detector_table(result) -> str:
    """One line per runtime, budget and attack set."""
    d = result.extra["detector"]
    rows = [[c["runtime"], f"{c['eps']:g}", c["attack"], c["successful_adversarials"], c["detection_rate"],
             c["false_positive_rate"], c["roc_auc"], c["undetected_success_rate"],
             f"{c['score_diff_vs_torch']['max']:.2e}", sum(len(v) for v in c["decision_differs_from_torch"].values())]
            for c in result.cells]
    head = (f"squeeze detector (threshold {d['threshold']:.4g}, target FPR {d['target_fpr']:.0%}) on "
            f"{result.samples} test samples, scored on each runtime's fp32 detector graph; threat models: "
            + "; ".join(f"{group}: {', '.join(threats)}" for group, threats in _set_threats(result).items()))
    return head + "\n" + table(["runtime", "eps", "attack", "fooled", "detect %", "FPR %", "AUC", "evade %",
                                "|ds| max", "flips"], rows)


def _set_threats(result) -> dict[str, list[str]]:
    """Per group of sets (`oblivious`, `adaptive`), the threat models its sets were crafted under."""
    found: dict[str, dict[str, None]] = {}
    for s in result.sets:
        found.setdefault(s.get("group") or "sets", {})[s.get("threat") or f"crafted on {s['source']}"] = None
    return {group: list(threats) for group, threats in found.items()}


PATCH_HEADERS = ["bundle/runtime", "defense", "patch", "n", "clean acc %", "clean->t %", "tSuc %", "fool %",
                 "threat model"]


def patch_rows(result) -> list[list]:
    """One row per model x runtime (x patch, behind LGS): clean accuracy and target rate, tSuc, fooling rate."""
    return [[c["runtime"], c["defense"], c.get("attack", "patch"), c["samples"], c["clean_accuracy"],
             c["clean_target_rate"], c["tsuc"], c["fooling_rate"], c.get("threat", "")] for c in result.cells]


def patch_table(result) -> str:
    return table(PATCH_HEADERS, patch_rows(result))


def suite_table(done) -> str:
    """One row per job of a suite: what it is, whether it ran now, and its headline number."""
    rows = []
    for d in done:
        r = d.result
        if d.job.kind == "check":
            headline = "PASSED" if r.extra.get("passed") else "FAILED"
        elif r.cells and "robust_accuracy" in r.cells[0]:
            top = max(c["eps"] for c in r.cells)
            worst = {c["runtime"]: c["robust_accuracy"] for c in r.cells if c["eps"] == top}
            headline = ", ".join(f"{k} {v:.2f}%" for k, v in worst.items()) + f" robust at eps={top:g}"
        else:
            headline = "-"
        rows.append([d.job.title, d.job.kind, d.status, headline, str(d.job.out)])
    return table(["job", "kind", "status", "headline", "result"], rows)


DIFF_HEADERS = ["eps", "deployment", "after search", "clean split %", "split %", "beyond clean", "searched",
                "queries", "seconds"]


def diff_rows(result) -> list[list]:
    """One row per (budget, deployment, search of the cascade): disagreement with the reference after it."""
    sets = {s["key"]: s for s in result.sets}
    rows = []
    for c in sorted(result.cells, key=lambda c: c["eps"]):
        s = next(s for s in sets.values() if (s["attack"], s["source"], s["eps"]) == (c["search"], c["runtime"],
                                                                                      c["eps"]))
        rows.append([f"{c['eps']:g}", f"{c['runtime']} vs {c['reference']}", c["search"], c["clean_disagreement"],
                     c["disagreement"], c["found_beyond_clean"], s["attacked"], s["queries_mean"], s["seconds"]])
    return rows


def diff_head(result) -> str:
    return (f"disagreements within the 8-bit L-inf ball, {result.samples} test samples, budget "
            f"{result.extra['budget']} deployment queries per sample and search")


def diff_table(result) -> str:
    """`diff_rows` under its head line, and where each located disagreement departs in the graph."""
    found = diff_head(result) + "\n" + table(DIFF_HEADERS, diff_rows(result))
    return found + "".join(f"\nwhere {key} departs (tolerance {result.extra['locate']['tolerance']:g} of a tensor's "
                           "scale):\n" + "\n".join(f"  {loc['line']}" for loc in located)
                           for key, located in result.extra.get("locate", {}).get("located", {}).items() if located)


def quantize_table(report) -> str:
    """Every int8 candidate measured: nodes kept fp32, robust accuracy, agreement, drops against fp32."""
    head = (f"{report.samples} samples, {'+'.join(report.attacks)} eps={report.eps:g}; fp32: robust "
            f"{report.fp32['robust_accuracy']:.2f}%, agreement {report.fp32['agreement']:.2f}%")
    rows = [[c.variant, ", ".join(c.excluded) or "-", c.clean_accuracy, c.robust_accuracy, f"{c.robust_drop:.2f}",
             c.agreement, f"{c.agreement_drop:.2f}", "yes" if c.meets else "no"] for c in report.candidates]
    found = head + "\n" + table(["candidate", "kept fp32", "clean %", "robust %", "robust drop", "agreement %",
                                 "agreement drop", "meets"], rows)
    if report.latency_ms:
        found += "\nlatency p50, batch 64: " + ", ".join(f"{k} {v:.3f} ms" for k, v in report.latency_ms.items())
    return found
