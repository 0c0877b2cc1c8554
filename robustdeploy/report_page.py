"""`report RESULTS --html page.html [--markdown page.md]`: one self-contained page over result files (and
`bench --out` benchmarks). A verdict per deployment comes first, then every sanity-check warning in words; then per
bundle and result: the gate's table,
accuracy-versus-budget curves per runtime, the per-attack and worst-case table, examples, samples whose outcome
differs from PyTorch, detector scores and ROC, latency distributions, and the rounding report. Figures are PNGs
inside the HTML (base64), so it needs no network."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustdeploy.bench import BENCH_HEADERS, BenchResult, bench_table_rows, load_bench
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.gate import ITEM_HEADERS, item_rows
from robustdeploy.evaluation.results import Result, load_result
from robustdeploy.evaluation.score import threat_kinds
from robustdeploy.figures import accuracy_curves, example_grid, latency_figure, score_figure
from robustdeploy.io import atomic_write_text, check_output, exclusive_outputs
from robustdeploy.report import (
    DIFF_HEADERS,
    EVALUATION_HEADERS,
    PATCH_HEADERS,
    _fmt,
    diff_head,
    diff_rows,
    evaluation_rows,
    patch_rows,
    table,
)
from robustdeploy.verdict import VERDICT_HEADERS, Verdict, verdicts

SHOWN_INDICES = 20  # sample indices listed per row of the differs-from-torch table


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list]
    anchor: str | None = None  # an id the verdict links to


@dataclass
class Part:
    """One result's section: a title, then text, tables and figures in order."""

    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


@dataclass
class Page:
    warnings: list[str]
    bundles: dict[str, list[Part]]
    verdicts: dict[str, list[Verdict]] = field(default_factory=dict)


def anchor(bundle: str, name: str) -> str:
    """The id of a result's table of differing samples."""
    return "differs-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{bundle}-{name}").strip("-")


def build_page(paths: list[Path], detector_device: str = "cpu") -> Page:
    """Read every result and lay the page out; nothing is measured here except the detector scores, which are
    recomputed from the stored examples."""
    if not paths:
        raise RobustDeployError("give at least one result JSON (written by evaluate, compare, check, ...)")
    benches = [Path(p) for p in paths if _is_bench(Path(p))]
    loaded = [(Path(p), *load_result(p)) for p in paths if Path(p) not in benches]
    measured = [(path, load_bench(path)) for path in benches]
    warnings, bundles = [], {}
    for path, result, stored in loaded:
        name = f"{Path(result.bundle).name} / {path.name}"
        warnings += [f"{name}: {c['name'].replace('_', ' ')} — {c['detail']}" for c in result.checks
                     if not c["passed"]]
        if not result.complete:
            warnings.append(f"{name}: the run was interrupted; its numbers cover only the sets crafted before that")
        if result.kind == "check" and not result.extra.get("passed", True):
            warnings += [f"{name}: gate FAILED for {i['runtime']}: {i['check']} — {i['detail']}"
                         for i in result.extra.get("items", []) if not i["passed"]]
        bundles.setdefault(Path(result.bundle).name, []).append(_part(path, result, stored, detector_device))
    for path, bench in measured:
        bundles.setdefault(Path(bench.bundle).name, []).append(bench_part(path, bench))
    return Page(warnings, bundles, verdicts([(path, result) for path, result, _ in loaded]))


def _is_bench(path: Path) -> bool:
    """Whether `path` claims to be a benchmark (it is then read, and checked, as one)."""
    try:
        return json.loads(path.read_text()).get("format", "").startswith("robustdeploy-bench/")
    except (OSError, ValueError, AttributeError):
        return False  # not readable as one: load_result says what is wrong with it


def bench_part(path: Path, bench: BenchResult) -> Part:
    """A benchmark's latency distributions (every timed run) per batch size and runtime, and its table."""
    panels: dict[str, dict[str, list[float]]] = {}
    for row in bench.rows:
        panels.setdefault(f"batch {row.batch_size}", {})[row.runtime] = row.samples_ms
    runs = sorted({row.iterations for row in bench.rows})
    return Part(f"{path.name}: latency", [
        f"Latency after warm-up, {'/'.join(map(str, runs))} timed runs per runtime and batch size, under these "
        "ONNX Runtime session options:",
        Table(["session option", "value"], [[k, v] for k, v in bench.session_options.items()]),
        Figure(latency_figure(panels, "latency per call"), "Latency distributions: each dot is one timed run; "
               "boxes span the quartiles, whiskers the 1st to 99th percentiles, the red line is the median."),
        Table(BENCH_HEADERS, bench_table_rows(bench))])


def _part(path: Path, result: Result, stored: dict[str, torch.Tensor], device: str) -> Part:
    attacks = ", ".join(a["label"] for a in result.attacks) or "-"
    part = Part(f"{path.name}: {result.kind}", [
        f"{result.samples} test samples, seed {result.seed}, norm {result.norm}, attacks {attacks}; runtimes "
        f"{', '.join(result.runtime_labels())}."])
    if result.kind == "check" and result.extra.get("items"):
        verdict = "PASSED" if result.extra.get("passed") else "FAILED"
        part.blocks += [f"Gate {verdict}: each item against its threshold, with the 95% interval its "
                        f"{result.samples} samples leave (Wilson for shares, Agresti-Min for paired drops); "
                        "UNRESOLVED where the interval holds the threshold: the sample count cannot tell on which "
                        "side of it the deployment is.", Table(ITEM_HEADERS, item_rows(result.extra["items"]))]
    if result.cells and "robust_accuracy" in result.cells[0]:
        plot = accuracy_curves(curves(result), f"budget eps ({result.norm or 'linf'})", "robust accuracy (%)",
                               "worst case over the cascade")
        part.blocks.append(Figure(plot, "Accuracy against the budget (eps 0: clean accuracy)."))
        part.blocks += ["Per attack of the cascade; the last row of each budget and runtime is the worst case.",
                        without_empty(Table(EVALUATION_HEADERS, evaluation_rows(result)))]
        part.blocks += differs(result, anchor(Path(result.bundle).name, path.name))
    if result.scorer == "diff":
        part.blocks += [diff_head(result) + ": the share of samples the search split from the reference (clean "
                        "splits apart), each split re-scored from its stored example.",
                        Table(DIFF_HEADERS, diff_rows(result))]
    if result.scorer == "target":
        part.blocks += ["Universal patch: tSuc is the share of patched images classified as the target class; "
                        "behind a defense, the worst case of the oblivious and the adaptive patch is the number "
                        "to read.", without_empty(Table(PATCH_HEADERS, patch_rows(result)))]
    if "median_latency_ms" in result.extra:
        agreement, latency = result.extra.get("agreement_with_torch", {}), result.extra["median_latency_ms"]
        batch = result.extra.get("latency_batch")
        options = result.extra.get("latency_session_options", {})
        threads = (f", PyTorch on {options['torch_threads']} threads, ONNX Runtime intra-op threads "
                   f"{options['intra_op_threads'] or 'its default'}") if options else ""
        part.blocks += [f"Median latency at batch {batch}{threads}, and top-1 agreement with PyTorch on clean inputs.",
                        Table(["runtime", "median ms", "agreement %"],
                              [[k, f"{v:.3f}", agreement.get(k)] for k, v in latency.items()])]
        if result.extra.get("latency_runs_ms"):  # compare results written before it kept every run have none
            part.blocks.append(Figure(latency_figure({f"batch {batch}": result.extra["latency_runs_ms"]},
                                                     "latency per call"),
                                      "Latency distributions: each dot is one timed run."))
    part.blocks += examples(path, result, stored)
    if result.extra.get("locate"):
        part.blocks += located(result.extra["locate"])
    if result.scorer == "detect":
        part.blocks += detector_blocks(result, stored, device)
    rounding = [[s["key"], s["attacked"], *(s["rounding"][k] for k in ("fooled_before", "fooled_after",
                                                                       "stopped_fooling", "started_fooling"))]
                for s in result.sets if s.get("rounding")]
    if rounding:
        part.blocks += ["Rounding to the 8-bit images the deployment receives: samples fooling the attacked model "
                        "before and after rounding.",
                        Table(["set", "attacked", "fooled (float)", "fooled (8-bit)", "stopped fooling",
                               "started fooling"], rounding)]
    return part


def located(locate: dict) -> list:
    """`diff --locate`: per disagreement, the first ONNX node departing from the reference and the top adders."""
    def node(d: dict | None) -> str:
        return "-" if d is None else f"{d['node']} ({d['op']}{', ' + d['module'] if d['module'] else ''})"
    rows = [[key, loc["sample"], "clean" if loc["clean"] else "searched", node(loc["first"]),
             "-" if loc["first"] is None else f"{loc['first']['error']:.3f}",
             "; ".join(f"{node(d)} +{d['added']:.3f}" for d in loc["top"])]
            for key, found in locate["located"].items() for loc in found]
    if not rows:
        return []
    return [f"Where each disagreement starts: the first shared ONNX tensor departing beyond "
            f"{locate['tolerance']:g} of its scale, and the nodes adding most departure over their inputs.",
            Table(["deployment", "sample", "input", "first departing node", "departure", "most added"], rows)]


def without_empty(t: Table) -> Table:
    """`t` less the columns with no value in any row (queries of gradient attacks, rounding of old results)."""
    keep = [i for i in range(len(t.headers)) if any(row[i] is not None for row in t.rows)]
    return Table([t.headers[i] for i in keep], [[row[i] for i in keep] for row in t.rows], t.anchor)


def curves(result: Result) -> dict[str, list[tuple[float, float]]]:
    """Per runtime (and group of sets), (0, clean accuracy) and (eps, accuracy after the whole cascade)."""
    group = {s["attack"]: s["group"] for s in result.sets}
    worst: dict[tuple[str, str, float], dict] = {}
    for c in result.cells:  # cells run in cascade order: the last one of a budget is the worst case
        worst[c["runtime"], group.get(c["attack"], ""), c["eps"]] = c
    lines: dict[str, list[tuple[float, float]]] = {}
    for (runtime, name, eps), c in worst.items():
        kinds = threat_kinds(c.get("threat", ""))
        line = lines.setdefault(f"{runtime} {name}".strip() + (f" ({kinds})" if kinds else ""),
                                [(0.0, c["clean_accuracy"])])
        line.append((eps, c["robust_accuracy"]))
    return lines


def differs(result: Result, anchor: str) -> list:
    """Samples whose clean prediction or attacked outcome differs between PyTorch and each deployment."""
    rows = [[c["runtime"], f"{c['eps']:g}", c["attack"], len(c["clean_differs_from_torch"]),
             len(c["outcome_differs_from_torch"]), _indices(c["outcome_differs_from_torch"])]
            for c in result.cells if c["runtime"] != "torch" and
            (c["clean_differs_from_torch"] or c["outcome_differs_from_torch"])]
    if not rows:
        return ["Every deployment agrees with PyTorch on every sample's clean prediction and attacked outcome."]
    return ["Samples whose outcome differs between PyTorch and a deployment (indices into the test split).",
            Table(["runtime", "eps", "after attack", "clean≠torch", "outcome≠torch", "samples"], rows, anchor)]


def _indices(found: list[int]) -> str:
    shown = ", ".join(map(str, found[:SHOWN_INDICES]))
    return shown + (f" … ({len(found)} in all)" if len(found) > SHOWN_INDICES else "")


def examples(path: Path, result: Result, stored: dict[str, torch.Tensor]) -> list:
    """The result's own example figure (with each runtime's predictions), else a grid drawn from its examples."""
    if result.figure and (path.parent / result.figure).is_file():
        shown = result.extra.get("figure_samples")
        which = f" (test samples {', '.join(map(str, shown))}; those whose outcome differs from PyTorch first)" \
            if shown else ""
        return [Figure((path.parent / result.figure).read_bytes(), f"Examples{which}: clean, perturbation, "
                       "adversarial, with each runtime's clean -> adversarial prediction.")]
    sets = [s for s in result.sets if s["eps"] is not None and s["key"] in stored]
    if not sets or "x" not in stored:
        return []
    last = max(sets, key=lambda s: (s["eps"], s["stage"]))
    x, adv, y = stored["x"], stored[last["key"]], stored["y"]
    differing = set().union(*(c.get("outcome_differs_from_torch", []) for c in result.cells))
    changed = (adv != x).flatten(1).any(1).nonzero().flatten().tolist()
    index = torch.tensor(sorted(changed, key=lambda i: i not in differing)[:4], dtype=torch.long)
    if not len(index):
        return []
    return [Figure(example_grid(x[index], adv[index], y[index], f"{last['key']}"),
                   f"Examples of {last['key']} (this result kept no predictions per runtime).")]


def detector_blocks(result: Result, stored: dict[str, torch.Tensor], device: str) -> list:
    """Per runtime, detector scores of clean samples and of successful adversarials at the largest budget, for
    each set (oblivious cascade and adaptive), recomputed from the stored examples with the bundle's graphs."""
    from robustdeploy.bundle import load_bundle
    from robustdeploy.evaluation.plans.detector import open_detectors

    bundle = load_bundle(Path(result.bundle))
    detectors = open_detectors(bundle, result.runtime_labels(), device)
    threshold = result.extra["detector"]["threshold"]
    top = max(result.epsilons)
    y, blocks = stored["y"], []
    for label in result.runtime_labels():
        logits, clean, _ = detectors[label].run(stored["x"])
        correct = logits.argmax(1) == y
        for s in [s for s in result.sets if s["eps"] is not None and abs(s["eps"] - top) < 1e-12]:
            adv_logits, scores, _ = detectors[label].run(stored[s["key"]])
            fooled = correct & (adv_logits.argmax(1) != y)
            blocks.append(Figure(score_figure(clean[correct], scores[fooled], threshold, f"{label}: {s['key']}"),
                                 f"Detector scores on {label}, {s['key']}: clean samples it classifies correctly "
                                 f"and the adversarials that fool it."))
    return blocks


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    name = f" id='{t.anchor}'" if t.anchor else ""
    return f"<table{name}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def verdict_html(page: Page) -> str:
    """The verdict block: per bundle, one row per deployment, its differing samples linked to their table."""
    out = ["<section class='verdict' id='verdict'><h2>Verdict per deployment</h2>"]
    if not any(page.verdicts.values()):
        out.append("<p>No result compares a deployment with the training graph (give evaluate, compare or check "
                   "results with torch and a deployment).</p>")
    for bundle, found in page.verdicts.items():
        if not found:
            continue
        head = "".join(f"<th>{h}</th>" for h in VERDICT_HEADERS)
        rows = []
        for v in found:
            text = v.cells()
            text = {k: html.escape(t) for k, t in text.items()}
            text["samples differing"] = ", ".join(f"<a href='#{anchor(bundle, f)}'>{k} in {html.escape(f)}</a>"
                                                  for f, k in v.differing.items()) or "-"
            mood = "bad" if "FAILED" in v.gate else "unsure" if "UNRESOLVED" in v.gate else "good"
            rows.append(f"<tr class='{mood}'>"
                        + "".join(f"<td>{text[h]}</td>" for h in VERDICT_HEADERS) + "</tr>")
        out.append(f"<h3>Bundle {html.escape(bundle)}</h3><table><thead><tr>{head}</tr></thead><tbody>"
                   + "".join(rows) + "</tbody></table>")
    out.append("<p class='note'>Drops are torch minus the deployment, in points (positive: the deployment is "
               "worse); the robust drop is the worst case over the cascade at each budget, with where its examples "
               "were crafted. Agreement is top-1 on clean inputs with its 95% Wilson interval.</p></section>")
    return "".join(out)


def verdict_text(page: Page) -> str:
    """The verdict block for a terminal: one table per bundle."""
    blocks = []
    for bundle, found in page.verdicts.items():
        lines = [f"verdict, bundle {bundle}:"]
        for v in found:
            text = v.cells()
            lines.append(f"  {v.deployment}: {text['verdict']}")
            lines += [f"    {h}: {text[h]}" for h in VERDICT_HEADERS[2:] if text[h] not in ("-", "not run")]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warnings{background:#fff4e5;border-left:4px solid #e69500;padding:0.5em 1em}.ok{background:#eef8ee;
border-left:4px solid #3a3;padding:0.5em 1em}figure{margin:0.5em 0 1.5em}img{max-width:100%}
figcaption{font-size:0.85em;color:#555}.verdict{border:2px solid #447;padding:0.2em 1em;margin-bottom:1em}
.verdict td,.verdict th{text-align:left}tr.bad td:nth-child(2){color:#b00;font-weight:bold}
tr.good td:nth-child(2){color:#060;font-weight:bold}
tr.unsure td:nth-child(2){color:#a65f00;font-weight:bold}.note{font-size:0.8em;color:#555}"""


def to_html(page: Page) -> str:
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>robustdeploy report</title>",
           f"<style>{STYLE}</style></head><body>", verdict_html(page), "<h1>robustdeploy report</h1>"]
    if page.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in page.warnings)
        out.append(f"<div class='warnings' id='warnings'><h2>Warnings ({len(page.warnings)})</h2><ul>{items}</ul>"
                   "</div>")
    else:
        out.append("<div class='ok' id='warnings'>Every sanity check of the measurements passed (how each "
                   "deployment compares is the verdict above).</div>")
    for bundle, parts in page.bundles.items():
        out.append(f"<h2>Bundle {html.escape(bundle)}</h2>")
        for part in parts:
            out.append(f"<h3>{html.escape(part.title)}</h3>")
            for block in part.blocks:
                if isinstance(block, Table):
                    out.append(_table_html(block))
                elif isinstance(block, Figure):
                    data = base64.b64encode(block.png).decode()
                    out.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                               f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
                else:
                    out.append(f"<p>{html.escape(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def to_markdown(page: Page) -> str:
    """The same page without its figures (they live in the HTML)."""
    out = ["# robustdeploy report", "", "## Verdict per deployment", ""]
    for bundle, found in page.verdicts.items():
        if found:
            out += [f"Bundle {bundle}:", "", table(VERDICT_HEADERS, [list(v.cells().values()) for v in found],
                                                   markdown=True), ""]
    out += ["## Warnings", "", *[f"- {w}" for w in page.warnings], ""] if page.warnings else \
        ["Every sanity check passed.", ""]
    for bundle, parts in page.bundles.items():
        out += [f"## Bundle {bundle}", ""]
        for part in parts:
            out += [f"### {part.title}", ""]
            for block in part.blocks:
                if isinstance(block, Table):
                    out += [table(block.headers, block.rows, markdown=True), ""]
                elif isinstance(block, Figure):
                    out += [f"*Figure (in the HTML report): {block.caption}*", ""]
                else:
                    out += [block, ""]
    return "\n".join(out)


@exclusive_outputs
def write_report(paths: list[Path], html_out: Path | None, markdown_out: Path | None) -> Page:
    """Build the page once and write it as HTML and/or Markdown (atomically)."""
    if html_out is None and markdown_out is None:
        raise RobustDeployError("give --html report.html and/or --markdown report.md")
    for out, option in ((html_out, "--html"), (markdown_out, "--markdown")):
        if out is not None:
            check_output(out, option)
    page = build_page(paths)
    if html_out is not None:
        atomic_write_text(html_out, to_html(page))
    if markdown_out is not None:
        atomic_write_text(markdown_out, to_markdown(page))
    return page
