"""`compare`: one row per runtime/variant: clean accuracy, agreement with PyTorch fp32, robust accuracy after
each attack of the cascade at each budget (the last column per budget is the worst case), median latency."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from robustdeploy.attacks import cascade
from robustdeploy.bench import BenchConfig, bench
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.evaluation.classify import agreement, classify, finish, new_result, write_figure
from robustdeploy.evaluation.craft import COMPARED, Plan
from robustdeploy.evaluation.results import Result
from robustdeploy.evaluation.score import threat_kinds
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.io import atomic_write_text, exclusive_outputs
from robustdeploy.report import table
from robustdeploy.runtimes.ort import SessionOptions


@dataclass(frozen=True)
class CompareConfig(SessionConfig):
    runtimes: tuple[str, ...] = ()  # default: torch + every variant of the bundle on ort-cpu
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    epsilons: tuple[float, ...] = (0.1,)
    attack_params: dict = field(default_factory=dict)
    latency_batch: int = 1
    latency_iterations: int = 50
    threads: int = 0  # PyTorch and ONNX Runtime intra-op threads while timing (0: each library's default)
    out: Path | None = None


def default_runtimes(bundle: Bundle) -> tuple[str, ...]:
    return ("torch", *[f"ort-cpu:{v}" if v != "fp32" else "ort-cpu" for v in bundle.variants])


@exclusive_outputs
def compare(config: CompareConfig) -> Result:
    """The cascade crafted once per source, scored on every runtime, plus agreement and latency."""
    bundle = load_bundle(config.bundle)
    names = config.runtimes or default_runtimes(bundle)
    session = open_session(replace(config, runtimes=names), bundle)
    out = Path(config.out) if config.out else Path("results") / f"{bundle.name}-compare.json"
    result = new_result("compare", session)
    plan = Plan(cascade(config.attacks, config.attack_params), config.epsilons, deployment_loop=COMPARED)
    scored = classify(result, session, [plan], out, resume=False)
    latency = bench(BenchConfig(bundle.path, tuple(names), (config.latency_batch,), warmup=5,
                                iterations=config.latency_iterations, device=config.device, seed=config.seed,
                                session=SessionOptions(config.threads)))
    result.extra = {
        "agreement_with_torch": agreement(result),
        "median_latency_ms": {row.runtime: row.p50_ms for row in latency.rows},
        "latency_runs_ms": {row.runtime: row.samples_ms for row in latency.rows},
        "latency_batch": config.latency_batch,
        "latency_session_options": latency.session_options,
    }
    result.figure = write_figure(out.with_suffix(".png"), scored.shown, scored.examples, result)
    result.complete = True
    finish(out, result, scored)
    atomic_write_text(out.with_suffix(".md"), compare_table(result, markdown=True) + "\n")
    return result


def compare_table(result: Result, markdown: bool = False) -> str:
    """The comparison as a table: a view of the result's cells, with the threat model of each runtime's worst case
    (the kinds of attack that ran on it, or `transfer only from X`)."""
    columns = [(c["attack"], c["eps"]) for c in result.cells if c["runtime"] == result.runtime_labels()[0]]
    headers = ["runtime", "clean %", "agree %", *[f"robust % {a}@{e:g}" for a, e in columns], "threat model",
               "p50 ms"]
    rows = []
    for runtime in result.runtime_labels():
        cells = [c for c in result.cells if c["runtime"] == runtime]
        rows.append([runtime, cells[0]["clean_accuracy"], result.extra["agreement_with_torch"][runtime],
                     *[c["robust_accuracy"] for c in cells], threat_kinds(cells[-1].get("threat", "")),
                     f"{result.extra['median_latency_ms'][runtime]:.3f}"])
    return table(headers, rows, markdown)
