"""Deployment benchmark on real MNIST (issue 19): per precision variant, robust accuracy under plain transfer from the
fp32 PyTorch graph, under deployment-in-the-loop PGD (gradients from the variant's twin, success judged by the ONNX
Runtime session), and under Square run on the variant itself, side by side, with the default evaluation's worst case.

The model is the tool's CNN trained on MNIST's training split (`--run` reuses a run folder), exported with fp32, fp16
and int8 (static QDQ) variants. Each column is one `evaluate` on the same first `--samples` test images, every example
rounded to 8 bits inside the budget and scored on every runtime: `transfer` is `--deployment-loop off` (PGD crafted
on torch alone, every step run, for transfer), `torch sets` the default evaluation's sets crafted on torch alone
(white-box there, each sample stopping once torch is fooled), `default` the default evaluation's worst case (every
stored example inside the budget, issue 27 item 4: the torch sets, then the in-the-loop set of each variant on the
samples they left), `loop adds` the points the in-the-loop set takes off, `square` Square on that runtime.
The twins' parity with their runtimes on the clean samples is printed too.

Usage: python benchmarks/deployment.py --data-root DIR [--samples N] [--run RUN_DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.results import load_result
from robustdeploy.evaluation.score import percent
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json, versions
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.runtimes import create_runtime
from robustdeploy.train import TrainConfig
from robustdeploy.variants import VariantConfig

RUNTIMES = ("torch", "ort-cpu", "ort-cpu:fp16", "ort-cpu:int8")


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--queries", type=int, default=1000, help="Square's query budget per sample")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--run", type=Path, help="a trained run folder to reuse instead of training")
    parser.add_argument("--work", type=Path, help="folder for the run, bundle and results (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("deployment.json"))
    return parser


def bundle_for(args, work: Path) -> Path:
    run = args.run
    if run is None:
        run = work / "run"
        if not run.exists():
            train(TrainConfig(arch="cnn", epochs=args.epochs, data=DataConfig("mnist", args.data_root)), run)
    bundle = work / "bundle"
    if not bundle.exists():
        export_bundle(ExportConfig(run_dir=run, out=bundle, data_root=args.data_root,
                                   variants=VariantConfig(("fp32", "fp16", "int8"))))
    return bundle


@contextlib.contextmanager
def prepared(args) -> Iterator[tuple[Path, Path]]:
    """(work folder, bundle): `--work` or a temporary folder, the CNN trained and exported there unless it is."""
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        yield work, bundle_for(args, work)


def main() -> None:
    args = arguments().parse_args()
    with prepared(args) as (work, bundle):
        def run(name: str, attacks: tuple[str, ...], params: dict, loop: str):
            print(f"evaluate {name} ...", flush=True)
            return evaluate(EvalConfig(bundle=bundle, runtimes=RUNTIMES, attacks=attacks, epsilons=tuple(args.eps),
                                       attack_params=params, limit=args.samples, data_root=args.data_root,
                                       out=work / f"{name}.json", deployment_loop=loop))

        transfer = run("transfer", ("pgd",), {"steps": args.steps}, "off")
        default = run("default", ("pgd",), {"steps": args.steps}, "auto")
        square = run("square", ("square",), {"max_queries": args.queries, "p_init": 0.8}, "off")
        stored = load_result(default.path)[1]
        y = stored["y"]
        opened = load_bundle(bundle)
        deployments = {r: create_runtime(opened, r) for r in RUNTIMES}
        own = {(s["source"], s["eps"]): s for s in default.sets if s.get("twin")}
        right = {(r, key): deployments[r].predict(stored[key]) == y for r in RUNTIMES
                 for key in ["x", *(s["key"] for s in default.sets if s["source"] == "torch")]}

        def robust_on(runtime: str, keys: list[str]) -> float:
            ok = right[runtime, "x"].clone()
            for key in keys:
                ok &= right[runtime, key]
            return percent(ok)

        # the default evaluation's sets crafted on torch alone (white-box, early stop on torch), at eps and below
        on_torch = {(r, e): robust_on(r, [s["key"] for s in default.sets if s["source"] == "torch" and s["eps"] <= e])
                    for r in RUNTIMES for e in args.eps}
    rows, records = [], []
    for eps in args.eps:
        for runtime in RUNTIMES:
            looped = own.get((runtime, eps))
            worst = default.cell(runtime, eps)["robust_accuracy"]
            record = {"eps": eps, "runtime": runtime, "clean": default.cell(runtime, eps)["clean_accuracy"],
                      "transfer": transfer.cell(runtime, eps)["robust_accuracy"],
                      "torch_sets": on_torch[runtime, eps], "default": worst,
                      "loop_adds": round(on_torch[runtime, eps] - worst, 4) if looped else None,
                      "square": square.cell(runtime, eps)["robust_accuracy"],
                      "threat": default.cell(runtime, eps)["threat"],
                      "twin": looped["twin"] if looped else None}
            records.append(record)
            rows.append([f"{eps:g}", runtime, record["clean"], record["transfer"], record["torch_sets"], worst,
                         "-" if record["loop_adds"] is None else record["loop_adds"], record["square"],
                         record["threat"]])
    print(f"MNIST CNN, {args.samples} test samples, PGD-{args.steps} / Square {args.queries} queries (p_init 0.8), "
          "L-inf, every example rounded to 8 bits; robust accuracy %")
    print(table(["eps", "runtime", "clean", "transfer", "torch sets", "default (worst)", "loop adds", "square",
                 "threat (default)"], rows))
    for s in default.sets:
        if s.get("twin"):
            print(f"twin of {s['source']} at eps {s['eps']:g}: {s['twin']}")
    atomic_write_json(args.out, {"samples": args.samples, "steps": args.steps, "queries": args.queries,
                                 "epsilons": args.eps, "rows": records, "versions": versions(),
                                 "seconds": {"transfer": transfer.seconds, "default": default.seconds,
                                             "square": square.seconds}})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
