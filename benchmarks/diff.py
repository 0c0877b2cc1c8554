"""Differential search benchmark: the gradient-guided boundary walk against the DiffChaser-style query-only genetic
search, on the same deployment variant of the same model: disagreements found per 1,000 deployment queries.

Each search runs alone (no cascade) through `robustdeploy diff`'s plan on the whole built-in digits test split,
at each budget eps, with the same per-sample query budget; a disagreement counts only when the stored 8-bit
example re-scores as one on both runtimes (the result's cells), and only beyond the clean split. Queries are every
deployment query the search spent (the clean one included), over all samples, found or not.

Without --bundle a digits CNN is trained (8 epochs, seed 0) and exported with fp32, fp16 and int8 variants into
a temporary folder. One CPU thread. Usage: python benchmarks/diff.py [--bundle DIR] [--against ort-cpu:int8]
[--eps 0.03 --eps 0.1] [--budget 100] [--limit N] [--out FILE].
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from robustdeploy.evaluation.plans.diff import DiffConfig, run_diff
from robustdeploy.io import atomic_write_json
from robustdeploy.report import table


def build_bundle(folder: Path) -> Path:
    from robustdeploy.export import ExportConfig, export_bundle
    from robustdeploy.recipe import train
    from robustdeploy.train import TrainConfig
    from robustdeploy.variants import VariantConfig

    train(TrainConfig(arch="cnn", epochs=8, seed=0), folder / "run")
    export_bundle(ExportConfig(run_dir=folder / "run", out=folder / "bundle",
                               variants=VariantConfig(("fp32", "fp16", "int8"))))
    return folder / "bundle"


def measure(bundle: Path, against: str, eps: float, search: str, budget: int, limit: int | None, folder: Path) -> dict:
    start = time.perf_counter()
    result = run_diff(DiffConfig(bundle, against=(against,), epsilons=(eps,), searches=(search,), budget=budget,
                                 limit=limit, out=folder / f"{search}-{eps:g}.json"))
    seconds = time.perf_counter() - start
    cell, found = result.cells[0], result.sets[0]
    queries = found["queries_mean"] * found["attacked"]
    return {"against": against, "eps": eps, "search": search, "budget": budget, "samples": result.samples,
            "clean_split": round(cell["clean_disagreement"] * result.samples / 100),
            "found": cell["found_beyond_clean"], "disagreement_percent": cell["disagreement"],
            "queries": int(queries), "found_per_1000_queries": round(1000 * cell["found_beyond_clean"] / queries, 3),
            "reference_gradients": found["gradients"], "seconds": round(seconds, 2),
            "confirmed_check": all(c["passed"] for c in result.checks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--against", default="ort-cpu:int8")
    parser.add_argument("--eps", type=float, action="append")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/diff.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_bundle(Path(tmp))
        rows = [measure(bundle, args.against, eps, search, args.budget, args.limit, Path(tmp))
                for eps in args.eps or [0.03, 0.05, 0.1] for search in ("gradient", "genetic")]
    print(f"{args.against} vs torch, {rows[0]['samples']} digits test samples, budget {args.budget} queries/sample")
    print(table(["eps", "search", "found", "split %", "queries", "found / 1k queries", "ref gradients", "seconds"],
                [[f"{r['eps']:g}", r["search"], r["found"], r["disagreement_percent"], r["queries"],
                  f"{r['found_per_1000_queries']:.3f}", r["reference_gradients"], r["seconds"]] for r in rows]))
    atomic_write_json(args.out, {"benchmark": "diff", "threads": 1, "rows": rows})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
