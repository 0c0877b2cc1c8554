"""Terminal tables and Markdown from result dataclasses: views of the data, never the data itself."""

from __future__ import annotations

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
    return str(value)


def evaluation_table(result, markdown: bool = False) -> str:
    """One row per (budget, runtime): clean, robust, success, and samples that differ from PyTorch."""
    rows = []
    for budget in result.budgets:
        for s in budget.scores:
            rows.append([f"{budget.eps:g}", s.runtime, s.clean_accuracy, s.robust_accuracy, s.attack_success_rate,
                         len(s.clean_differs_from_torch), len(s.adversarial_differs_from_torch)])
    headers = ["eps", "runtime", "clean %", "robust %", "success %", "clean≠torch", "adv≠torch"]
    return table(headers, rows, markdown)


def blackbox_table(result, markdown: bool = False) -> str:
    """One row per (budget, runtime) of a black-box run: accuracy, success and queries on that runtime."""
    rows = [[f"{b.eps:g}", s.runtime, s.clean_accuracy, s.robust_accuracy, s.attack_success_rate, s.queries_mean,
             s.queries_median, (s.rounding or {}).get("stopped_fooling", "-")]
            for b in result.budgets for s in b.scores]
    headers = ["eps", "runtime", "clean %", "robust %", "success %", "queries mean", "queries median",
               "lost to rounding"]
    return table(headers, rows, markdown)
