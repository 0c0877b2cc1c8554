"""Purifier benchmark (seed 003): conv-ae and conv-vae in front of the same digits classifier, defend-eval rows.

Trains `cnn` on the built-in digits, then each purifier on it (classifier frozen), exports each composite as one
ONNX graph, and runs `defend-eval` (PGD-40, L-inf): oblivious (crafted on the bare classifier) and adaptive
(through the purifier; for the VAE with EOT over its sampling, 10 draws per gradient), scored on torch and
ort-cpu, 8-bit realised. For the VAE it also runs plain PGD through the deployed z = mu graph (`evaluate`), the
other adaptive attacker. Writes benchmarks/results/purifiers.json and the result files beside it.

Usage: python benchmarks/purifiers.py [--eps 0.1 --eps 0.2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig

RUNTIMES = ("torch", "ort-cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, action="append")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/purifiers"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/purifiers.json"))
    args = parser.parse_args()
    epsilons = tuple(args.eps or (0.1, 0.2))
    shutil.rmtree(args.work, ignore_errors=True)
    base = args.work / "run-cnn"
    train(TrainConfig(arch="cnn", epochs=args.epochs), base)
    rows, found = [], []
    for name in ("conv-ae", "conv-vae"):
        start = time.perf_counter()
        train(TrainConfig(epochs=args.epochs, defense="purifier", defense_params={"base": str(base),
                                                                                "purifier": name}),
              args.work / f"run-{name}")
        train_seconds = time.perf_counter() - start
        bundle, parity = export_bundle(ExportConfig(run_dir=args.work / f"run-{name}",
                                                    out=args.work / f"bundle-{name}"))
        for eps in epsilons:
            start = time.perf_counter()
            result = evaluate_defense(DefenseEvalConfig(bundle=bundle.path, eps=eps, runtimes=RUNTIMES,
                                                        out=args.work / f"defense-{name}-{eps:g}.json"))
            seconds = time.perf_counter() - start
            plain = None
            if name == "conv-vae":
                plain = evaluate(EvalConfig(bundle=bundle.path, runtimes=RUNTIMES, epsilons=(eps,),
                                            out=args.work / f"pgd-{name}-{eps:g}.json"))
            for runtime in RUNTIMES:
                cells = {c["attack"].split(":")[0]: c for c in result.cells if c["runtime"] == runtime}
                mean_path = None if plain is None else \
                    next(c["robust_accuracy"] for c in plain.cells if c["runtime"] == runtime)
                found.append({"purifier": name, "runtime": runtime, "eps": eps,
                              "clean": cells["adaptive"]["clean_accuracy"],
                              "oblivious": cells["oblivious"]["robust_accuracy"],
                              "adaptive": cells["adaptive"]["robust_accuracy"], "adaptive_mean_path": mean_path,
                              "adaptive_source": next(s["source"] for s in result.sets if s["group"] == "adaptive"),
                              "parity_max_abs": parity.max_abs, "train_seconds": round(train_seconds, 1),
                              "eval_seconds": round(seconds, 1)})
                rows.append([name, runtime, f"{eps:g}", f"{found[-1]['clean']:.2f}", f"{found[-1]['oblivious']:.2f}",
                             f"{found[-1]['adaptive']:.2f}", "-" if mean_path is None else f"{mean_path:.2f}",
                             found[-1]["adaptive_source"], f"{train_seconds:.0f}", f"{seconds:.0f}"])
        print(table(["purifier", "runtime", "eps", "clean %", "oblivious %", "adaptive %", "PGD on z=mu %",
                     "adaptive source", "train s", "eval s"], rows), flush=True)
        atomic_write_json(args.out, {"epochs": args.epochs, "epsilons": list(epsilons), "samples": result.samples,
                                     "rows": found})


if __name__ == "__main__":
    main()
