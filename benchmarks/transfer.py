"""Transfer benchmark on real MNIST (issue 19): `evaluate --surrogate` against plain torchattacks PGD-40 from the same
surrogate, on the same samples, every example rounded to 8 bits inside the budget and scored on the target's ONNX
Runtime session; plus robustdeploy's transfer boosters (MI-FGSM momentum, DI input diversity).

The target is a bundle (`--bundle`, e.g. the one benchmarks/deployment.py writes); the surrogate is the tool's CNN
trained with another seed on the same training split (`--surrogate-run` reuses a run folder). robustdeploy runs as
`evaluate --surrogate S --deployment-loop off` (plain transfer: no early stop on the surrogate, every budget crafted
on its own). Success is the share of the samples the target classifies correctly that the examples fool.

Usage: python benchmarks/transfer.py --data-root DIR --bundle BUNDLE [--samples N] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig
from robustdeploy.evaluation.grid import realise
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.score import percent
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json, versions
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig

STEPS, REL_STEP = 40, 2.5
BOOSTERS = {"pgd": {}, "pgd + MI (decay 1.0)": {"decay": 1.0}, "pgd + DI (p 0.5)": {"diversity_prob": 0.5},
            "pgd + MI + DI": {"decay": 1.0, "diversity_prob": 0.5}}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--bundle", type=Path, required=True, help="the target bundle (scored on ort-cpu)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--surrogate-run", type=Path, help="a trained run folder to use as the surrogate")
    parser.add_argument("--work", type=Path, help="folder for the surrogate and results (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("transfer.json"))
    return parser


def torchattacks_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    import torchattacks

    torch.manual_seed(0)
    attack = torchattacks.PGD(model, eps=eps, alpha=REL_STEP * eps / STEPS, steps=STEPS, random_start=True)
    return torch.cat([attack(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)])


def main() -> None:
    args = arguments().parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = args.surrogate_run or work / "surrogate-run"
        if not run.exists():
            train(TrainConfig(arch="cnn", epochs=args.epochs, seed=1, data=DataConfig("mnist", args.data_root)), run)
        surrogate = work / "surrogate"
        if not surrogate.exists():
            export_bundle(ExportConfig(run_dir=run, out=surrogate, data_root=args.data_root))
        session = open_session(SessionConfig(args.bundle, ("ort-cpu",), limit=args.samples, data_root=args.data_root))
        target, x, y = session.runtimes[0], session.test.x, session.test.y
        right = target.predict(x) == y
        rows, records = [], []
        model = load_bundle(surrogate).reference_model().eval()
        for eps in args.eps:
            adv = realise(torchattacks_pgd(model, x, y, eps), x, eps, "linf")
            fooled = target.predict(adv) != y
            records.append({"eps": eps, "attack": f"torchattacks PGD-{STEPS}", "success": percent(fooled, right),
                            "robust_accuracy": percent(right & ~fooled)})
        for name, knobs in BOOSTERS.items():
            result = evaluate(EvalConfig(bundle=args.bundle, runtimes=("ort-cpu",), attacks=("pgd",),
                                         epsilons=tuple(args.eps), attack_params={"steps": STEPS, **knobs},
                                         limit=args.samples, data_root=args.data_root, surrogate=surrogate,
                                         deployment_loop="off", out=work / f"{name.replace(' ', '')}.json"))
            for eps in args.eps:
                cell = result.cell("ort-cpu", eps)
                records.append({"eps": eps, "attack": f"robustdeploy {name}-{STEPS} --surrogate",
                                "success": cell["attack_success_rate"], "robust_accuracy": cell["robust_accuracy"],
                                "threat": cell["threat"]})
    for r in sorted(records, key=lambda r: r["eps"]):
        rows.append([f"{r['eps']:g}", r["attack"], r["success"], r["robust_accuracy"]])
    print(f"MNIST, target CNN on ort-cpu, surrogate CNN (seed 1), {args.samples} test samples ({int(right.sum())} "
          f"correct on the target), L-inf, rounded to 8 bits")
    print(table(["eps", "transfer attack", "success %", "target robust %"], rows))
    atomic_write_json(args.out, {"samples": args.samples, "target_correct": int(right.sum()), "rows": records,
                                 "versions": versions()})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
