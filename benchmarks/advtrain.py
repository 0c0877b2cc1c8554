"""Adversarial-training benchmark: the three inner maximisations against the undefended model, on digits.

Trains `cnn` on the built-in digits four ways (standard; adv-train with --inner madry, early-stop, trades, all at
the same L-inf training budget, steps and epochs), exports each to a bundle, and runs the evaluation core's
AutoAttack-style cascade on the test split: PGD-40 (cross-entropy), then APGD-100 (DLR) on the samples PGD left
robust, then Square (--square-queries) on each runtime itself on what is left, every example 8-bit realised and
scored on torch and ort-cpu. Columns: clean accuracy, robust accuracy after PGD, after + APGD, after + Square (the
worst case), per evaluation budget. Writes benchmarks/results/advtrain.json and the result files beside it.

Usage: python benchmarks/advtrain.py [--train-eps 0.2] [--eps 0.1 --eps 0.2 --eps 0.3] [--epochs 10] [--steps 7]
       [--square-queries 1000] [--limit N] [--inner none --inner madry ...] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig

ATTACKS = ("pgd", "apgd:dlr", "square")
RUNTIMES = ("torch", "ort-cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-eps", type=float, default=0.2)
    parser.add_argument("--eps", type=float, action="append")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=7, help="inner-maximisation steps during training")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--inner", action="append", help="none (standard training) or an inner maximisation "
                        "(default: none and all three)")
    parser.add_argument("--limit", type=int, help="evaluate the first N test samples only")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/advtrain"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/advtrain.json"))
    args = parser.parse_args()
    epsilons = tuple(args.eps or (0.1, 0.2, 0.3))
    shutil.rmtree(args.work, ignore_errors=True)
    rows, found = [], []
    for inner in args.inner or ("none", "madry", "early-stop", "trades"):
        params = {} if inner == "none" else {"eps": args.train_eps, "attack_steps": args.steps, "inner": inner}
        config = TrainConfig(arch="cnn", epochs=args.epochs, defense="adv-train" if params else "none",
                             defense_params=params)
        start = time.perf_counter()
        train(config, args.work / f"run-{inner}")
        train_seconds = time.perf_counter() - start
        bundle, _ = export_bundle(ExportConfig(run_dir=args.work / f"run-{inner}", out=args.work / f"bundle-{inner}"))
        start = time.perf_counter()
        result = evaluate(EvalConfig(bundle=bundle.path, runtimes=RUNTIMES, attacks=ATTACKS, epsilons=epsilons,
                                     limit=args.limit,
                                     attack_params={"max_queries": args.square_queries},
                                     out=args.work / f"eval-{inner}.json"))
        eval_seconds = time.perf_counter() - start
        for runtime in RUNTIMES:
            for eps in epsilons:
                cells = {c["attack"]: c for c in result.cells if c["runtime"] == runtime and c["eps"] == eps}
                robust = [cells[a]["robust_accuracy"] for a in ATTACKS]
                found.append({"inner": inner, "runtime": runtime, "eps": eps,
                              "clean": cells[ATTACKS[0]]["clean_accuracy"], **dict(zip(ATTACKS, robust)),
                              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1)})
                rows.append([inner, runtime, f"{eps:g}", f"{found[-1]['clean']:.2f}",
                             *(f"{r:.2f}" for r in robust), f"{train_seconds:.0f}", f"{eval_seconds:.0f}"])
        print(table(["inner", "runtime", "eps", "clean %", "PGD %", "+APGD-DLR %", "+Square %", "train s", "eval s"],
                    rows), flush=True)
        atomic_write_json(args.out, {"train_eps": args.train_eps, "epochs": args.epochs, "steps": args.steps,
                                     "square_queries": args.square_queries, "epsilons": list(epsilons),
                                     "samples": result.samples, "rows": found})


if __name__ == "__main__":
    main()
