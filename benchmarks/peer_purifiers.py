"""Purifiers against a peer: robustdeploy's adaptive `defend-eval` vs torchattacks AutoAttack (standard) on the
same bundles and samples; AutoAttack's examples are realised to the 8-bit grid inside eps and scored on torch and
ort-cpu. Needs torchattacks (`pip install torchattacks`, not a robustdeploy dependency). Trains the cnn and both
purifiers as benchmarks/purifiers.py does (10 epochs each), prints one row per purifier, eps and runtime, writes
JSON. Usage: python benchmarks/peer_purifiers.py [--work DIR]
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torchattacks

from robustdeploy.bundle import load_bundle
from robustdeploy.data import load_test_samples
from robustdeploy.evaluation.grid import realise
from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.recipe import train
from robustdeploy.runtimes import create_runtime
from robustdeploy.train import TrainConfig

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--work", type=Path, default=Path("benchmarks/results/peer_purifiers"))
work = parser.parse_args().work
torch.set_num_threads(2)
base = work / "run-cnn"
if not base.exists():
    train(TrainConfig(arch="cnn", epochs=10), base)
rows = []
for name in ("conv-ae", "conv-vae"):
    if not (work / f"bundle-{name}").exists():
        train(TrainConfig(epochs=10, defense="purifier", defense_params={"base": str(base), "purifier": name}),
              work / f"run-{name}")
        export_bundle(ExportConfig(run_dir=work / f"run-{name}", out=work / f"bundle-{name}"))
    bundle = load_bundle(work / f"bundle-{name}")
    test = load_test_samples(bundle.data).load()
    x, y = test.x, test.y
    runtimes = {r: create_runtime(bundle, r) for r in ("torch", "ort-cpu")}
    model = bundle.reference_model().eval()
    for eps in (0.1, 0.2):
        ours = evaluate_defense(DefenseEvalConfig(bundle=bundle.path, eps=eps, runtimes=("torch", "ort-cpu"),
                                                  out=work / f"d-{name}-{eps}.json"))
        t = time.perf_counter()
        adv = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)(x, y)
        seconds = time.perf_counter() - t
        adv = realise(adv, x, eps, "linf")
        for r, rt in runtimes.items():
            clean = rt.predict(x, 256) == y
            robust = clean & (rt.predict(adv, 256) == y)
            mine = [c for c in ours.cells if c["runtime"] == r and c["attack"].startswith("adaptive")][-1]
            rows.append({"purifier": name, "eps": eps, "runtime": r,
                         "clean": round(100 * clean.float().mean().item(), 2), "ours_adaptive": mine["robust_accuracy"],
                         "autoattack_rounded": round(100 * robust.float().mean().item(), 2),
                         "aa_seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
(work / "peer.json").write_text(json.dumps(rows, indent=1))
