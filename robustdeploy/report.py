"""Terminal tables and Markdown from results: views of the data, never the data itself."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


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


def evaluation_table(result, markdown: bool = False) -> str:
    """One row per (budget, runtime, attack of the cascade): robust accuracy after that attack (the last row of
    each budget and runtime is the worst case), queries and examples lost to 8-bit rounding where they apply."""
    sets = {(s["attack"], s["source"], s["eps"]): s for s in result.sets}
    rows = []
    for c in sorted(result.cells, key=lambda c: c["eps"]):
        own = sets.get((c["attack"], c["runtime"], c["eps"])) or sets.get((c["attack"], "torch", c["eps"])) or {}
        rows.append([f"{c['eps']:g}", c["runtime"], c["attack"], c["clean_accuracy"], c["robust_accuracy"],
                     c["attack_success_rate"], own.get("queries_mean"), (own.get("rounding") or {}).get(
                         "stopped_fooling"), len(c["clean_differs_from_torch"]),
                     len(c["outcome_differs_from_torch"])])
    headers = ["eps", "runtime", "after attack", "clean %", "robust %", "success %", "queries", "lost to rounding",
               "clean≠torch", "outcome≠torch"]
    text = table(headers, rows, markdown)
    for name, norms in result.extra.get("norms", {}).items():
        found = [n for n in norms if n is not None and n > 0]
        if found:
            text += f"\n{name}: median norm {statistics.median(found):.4g}, mean {statistics.fmean(found):.4g} " \
                    f"over {len(found)} fooled samples ({sum(n is None for n in norms)} not fooled)"
    return text


def defense_table(result) -> str:
    extra = result.extra
    attack = result.attacks[0]
    head = (f"{extra['defense']} | {attack['name']} {result.norm} eps={result.epsilons[0]:g}, {result.samples} "
            f"samples | oblivious: crafted on {extra['oblivious_source']} | adaptive: through the defense, "
            f"{extra['adaptive_loss']} loss")
    rows = []
    for runtime in result.runtime_labels():
        robust = {c["attack"].split(":")[0]: c for c in result.cells if c["runtime"] == runtime}
        rows.append([runtime, robust["oblivious"]["clean_accuracy"], robust["oblivious"]["robust_accuracy"],
                     robust["adaptive"]["robust_accuracy"], extra["verdicts"][runtime]])
    return head + "\n" + table(["runtime", "clean %", "oblivious %", "adaptive %", "verdict"], rows)


def detector_table(result) -> str:
    """One line per runtime, budget and attack set."""
    d = result.extra["detector"]
    rows = [[c["runtime"], f"{c['eps']:g}", c["attack"], c["successful_adversarials"], c["detection_rate"],
             c["false_positive_rate"], c["roc_auc"], c["undetected_success_rate"],
             f"{c['score_diff_vs_torch']['max']:.2e}", sum(len(v) for v in c["decision_differs_from_torch"].values())]
            for c in result.cells]
    head = (f"squeeze detector (threshold {d['threshold']:.4g}, target FPR {d['target_fpr']:.0%}) on "
            f"{result.samples} test samples")
    return head + "\n" + table(["runtime", "eps", "attack", "fooled", "detect %", "FPR %", "AUC", "evade %",
                                "|ds| max", "flips"], rows)


def patch_table(result) -> str:
    rows = [[c["runtime"], c["defense"], c["samples"], c["clean_target_rate"], c["tsuc"], c["fooling_rate"]]
            for c in result.cells]
    return table(["bundle/runtime", "defense", "n", "clean->t %", "tSuc %", "fool %"], rows)


def diff_table(result) -> str:
    """One row per (budget, deployment, search of the cascade): disagreement with the reference after it."""
    sets = {s["key"]: s for s in result.sets}
    rows = []
    for c in sorted(result.cells, key=lambda c: c["eps"]):
        s = next(s for s in sets.values() if (s["attack"], s["source"], s["eps"]) == (c["search"], c["runtime"],
                                                                                      c["eps"]))
        rows.append([f"{c['eps']:g}", f"{c['runtime']} vs {c['reference']}", c["search"], c["clean_disagreement"],
                     c["disagreement"], c["found_beyond_clean"], s["attacked"], s["queries_mean"], s["seconds"]])
    head = (f"disagreements within the 8-bit L-inf ball, {result.samples} test samples, budget "
            f"{result.extra['budget']} deployment queries per sample and search")
    return head + "\n" + table(["eps", "deployment", "after search", "clean split %", "split %", "beyond clean",
                                "searched", "queries", "seconds"], rows)
