"""Adversarial-training benchmark: the inner maximisations against the undefended model, beside AutoAttack.

Trains `cnn` several ways (standard; adv-train with --inner madry, early-stop, trades, all at the same L-inf training
budget, steps and epochs, each with its defaults: madry ramps eps over the first fifth of the epochs (at least one)
and anneals the rate on a cosine), exports each to a bundle, and runs the evaluation core's AutoAttack-style cascade
on the test split: PGD-40 (cross-entropy), then APGD-100 (DLR) on the samples PGD left robust, then APGD-T (targeted
DLR, 9 targets), then Square (--square-queries; AutoAttack's is 5000) on each runtime itself on what is left, every
example 8-bit realised and scored on each runtime. Beside it, with --autoattack, torchattacks' AutoAttack (standard:
APGD-CE, APGD-T, FAB-T, Square-5000) on the same samples on the PyTorch model, scored on float pixels and once more
8-bit realised inside the budget. --reuse evaluates the run folders of --work again without training.
--dataset mnist --data-root DIR trains on real MNIST (its 10k-image file split by --val-fraction/--test-fraction).
Writes benchmarks/results/advtrain.json and the result files beside it.

Usage: python benchmarks/advtrain.py [--dataset digits] [--data-root DIR] [--val-fraction 0.15]
       [--test-fraction 0.15] [--train-eps 0.2] [--eps 0.1 --eps 0.2 --eps 0.3] [--epochs 10] [--steps 7]
       [--square-queries 1000] [--limit N] [--inner none --inner madry ...] [--runtime torch ...] [--autoattack]
       [--reuse] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.evaluation.grid import realise
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.session import open_session
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig, load_run

ATTACKS = ("pgd", "apgd:dlr", "apgd-t", "square")


def autoattack(config: EvalConfig, eps: float) -> tuple[float, float]:
    """torchattacks' AutoAttack (standard) on the evaluation's samples and the bundle's PyTorch graph: robust
    accuracy (%) on its float examples and on them 8-bit realised inside eps."""
    import torchattacks

    session = open_session(config)
    model = load_bundle(config.bundle).reference_model().eval()
    x, y = session.test.x, session.test.y
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                     n_classes=len(session.bundle.classes), seed=0)
    adv = attack(x, y)
    with torch.no_grad():
        floats = (model(adv).argmax(1) == y) & (model(x).argmax(1) == y)
        rounded = (model(realise(adv, x, eps, "linf")).argmax(1) == y) & (model(x).argmax(1) == y)
    return 100.0 * float(floats.float().mean()), 100.0 * float(rounded.float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--runtime", action="append", help="runtimes to score (default torch and ort-cpu)")
    parser.add_argument("--autoattack", action="store_true", help="torchattacks' AutoAttack on the same samples")
    parser.add_argument("--train-eps", type=float, default=0.2)
    parser.add_argument("--eps", type=float, action="append")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=7, help="inner-maximisation steps during training")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--inner", action="append", help="none (standard training) or an inner maximisation "
                        "(default: none and all three)")
    parser.add_argument("--limit", type=int, help="evaluate the first N test samples only")
    parser.add_argument("--reuse", action="store_true", help="keep the run folders of --work that exist (evaluate "
                        "again without training)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/advtrain"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/advtrain.json"))
    args = parser.parse_args()
    epsilons = tuple(args.eps or (0.1, 0.2, 0.3))
    runtimes = tuple(args.runtime or ("torch", "ort-cpu"))
    data = DataConfig(name=args.dataset, data_root=args.data_root, val_fraction=args.val_fraction,
                      test_fraction=args.test_fraction)
    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
    rows, found, train_samples = [], [], len(load_dataset(data).train)
    for inner in args.inner or ("none", "madry", "early-stop", "trades"):
        params = {} if inner == "none" else {"eps": args.train_eps, "attack_steps": args.steps, "inner": inner}
        config = TrainConfig(arch="cnn", data=data, epochs=args.epochs, defense="adv-train" if params else "none",
                             defense_params=params)
        run = args.work / f"run-{inner}"
        if not (args.reuse and run.exists()):
            train(config, run)
        train_seconds = load_run(run)[1].metrics["train_seconds"]
        shutil.rmtree(args.work / f"bundle-{inner}", ignore_errors=True)
        for stale in args.work.glob(f"eval-{inner}.*"):
            stale.unlink()
        bundle, _ = export_bundle(ExportConfig(run_dir=run, out=args.work / f"bundle-{inner}"))
        start = time.perf_counter()
        evaluation = EvalConfig(bundle=bundle.path, runtimes=runtimes, attacks=ATTACKS, epsilons=epsilons,
                                limit=args.limit, data_root=args.data_root,
                                attack_params={"max_queries": args.square_queries},
                                out=args.work / f"eval-{inner}.json")
        result = evaluate(evaluation)
        eval_seconds = time.perf_counter() - start
        peer = {eps: autoattack(evaluation, eps) if args.autoattack else (None, None) for eps in epsilons}
        for runtime in runtimes:
            for eps in epsilons:
                cells = {c["attack"]: c for c in result.cells if c["runtime"] == runtime and c["eps"] == eps}
                robust = [cells[a]["robust_accuracy"] for a in ATTACKS]
                found.append({"inner": inner, "runtime": runtime, "eps": eps,
                              "clean": cells[ATTACKS[0]]["clean_accuracy"], **dict(zip(ATTACKS, robust)),
                              "autoattack_float": peer[eps][0], "autoattack_8bit": peer[eps][1],
                              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1)})
                rows.append([inner, runtime, f"{eps:g}", f"{found[-1]['clean']:.2f}",
                             *(f"{r:.2f}" for r in robust),
                             *("-" if a is None else f"{a:.2f}" for a in peer[eps]),
                             f"{train_seconds:.0f}", f"{eval_seconds:.0f}"])
        print(table(["inner", "runtime", "eps", "clean %", "PGD %", "+APGD-DLR %", "+APGD-T %", "+Square %",
                     "AA float %", "AA 8-bit %", "train s", "eval s"], rows), flush=True)
        atomic_write_json(args.out, {"dataset": args.dataset, "train_samples": train_samples,
                                     "train_eps": args.train_eps,
                                     "epochs": args.epochs, "steps": args.steps, "square_queries": args.square_queries,
                                     "epsilons": list(epsilons), "samples": result.samples, "rows": found})


if __name__ == "__main__":
    main()
