"""Bring-your-own-model benchmark: a timm model at its usual input size through import, evaluate and bench.

1. Writes an image folder of JPEGs of assorted sizes (random content, --classes class folders), saves a timm model's
   random weights (safetensors) and imports them with `robustdeploy import torch` at 3 x SIZE x SIZE with ImageNet
   mean/std (fp32 + fp16 variants): import seconds and parity of every variant.
2. For two dataset sizes (--sizes, images in the folder), each in a fresh process: evaluate PGD (--steps, L-inf
   2/255) crafted on torch and scored on torch, ort-cpu and ort-cpu:fp16, batch --batch-size. Per runtime: clean
   top-1 agreement with torch, robust accuracy, PGD seconds per attacked image; per process: peak RSS, its growth
   over the process's RSS before evaluating (libraries loaded), and the test split's own size. The evaluation holds
   one --window of samples at a time (default: one batch), so the growth must not depend on the number of images.

Random weights: accuracy means nothing here, agreement between runtimes and cost do.
Usage: python benchmarks/byom.py [--arch timm:resnet18] [--size 224] [--sizes 16 48] [--steps 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_folder(root: Path, images: int, classes: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(240, 400)), int(rng.integers(240, 400))
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(bundle: str, data_root: str, out: str, steps: int, batch_size: int, window: int) -> dict:
    """One evaluation in this process; memory figures are this process's."""
    import torch

    from robustdeploy.bundle import load_bundle
    from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate

    torch.set_num_threads(2)
    runtimes = ("torch", "ort-cpu", "ort-cpu:fp16")
    shape = load_bundle(Path(bundle)).input_shape
    baseline = current_rss_mb()  # libraries imported, nothing loaded
    start = time.perf_counter()
    result = evaluate(EvalConfig(bundle=Path(bundle), runtimes=runtimes, attacks=("pgd",), epsilons=(2 / 255,),
                                 attack_params={"steps": steps}, batch_size=batch_size, data_root=data_root,
                                 window=window, out=Path(out)))
    seconds = time.perf_counter() - start
    pgd, n = result.sets[0], result.samples
    agreement = {c["runtime"]: round(100 * (1 - len(c["clean_differs_from_torch"]) / n), 2) for c in result.cells}
    return {"images": n, "agreement": agreement,
            "robust": {c["runtime"]: c["robust_accuracy"] for c in result.cells},
            "clean": {c["runtime"]: c["clean_accuracy"] for c in result.cells},
            "pgd_seconds_per_image": pgd["seconds"] / max(1, pgd["attacked"]), "attacked": pgd["attacked"],
            "evaluate_seconds": round(seconds, 2), "split_mb": round(n * np.prod(shape) * 4 / 2**20, 1),
            "rss_baseline_mb": round(baseline, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="timm:resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs=2, default=[16, 48], help="test images at the two dataset sizes")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=int, help="samples held at a time (default: --batch-size)")
    parser.add_argument("--out", default="benchmarks/results/byom.json")
    parser.add_argument("--measure", nargs=3, metavar=("BUNDLE", "DATA_ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.steps, args.batch_size, args.window or args.batch_size)))
        return

    import timm
    import torch
    from safetensors.torch import save_file

    from robustdeploy.data import DataConfig
    from robustdeploy.importer import ImportConfig, import_torch
    from robustdeploy.io import atomic_write_json
    from robustdeploy.preprocess import PRESETS, Preprocessing
    from robustdeploy.report import table
    from robustdeploy.variants import VariantConfig

    torch.set_num_threads(2)
    torch.manual_seed(0)  # the random weights
    work = Path(tempfile.mkdtemp(prefix="byom-"))
    # the folders hold 2x the test images: load_dataset splits test_fraction=0.5 off for evaluation
    roots = [write_folder(work / f"data-{n}", 2 * n, args.classes) for n in args.sizes]
    net = timm.create_model(args.arch.removeprefix("timm:"), pretrained=False, num_classes=args.classes)
    save_file(net.state_dict(), str(work / "weights.safetensors"))
    mean, std = PRESETS["imagenet"]
    pre = Preprocessing((3, args.size, args.size), mean, std, resize=round(args.size * 256 / 224))
    start = time.perf_counter()
    bundle = import_torch(ImportConfig(
        out=work / "bundle", arch=args.arch, weights=work / "weights.safetensors",
        data=DataConfig("imagefolder", str(roots[0]), test_fraction=0.5, preprocessing=pre),
        variants=VariantConfig(precisions=("fp32", "fp16"))))
    import_seconds = time.perf_counter() - start
    parity = {k: v["parity"] for k, v in bundle.variants.items()}
    runs = []
    for n, root in zip(args.sizes, roots):
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--batch-size",
                               str(args.batch_size), "--window", str(args.window or args.batch_size), "--measure",
                               str(bundle.path), str(root),
                               str(work / f"result-{n}.json")], capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{args.arch} at 3x{args.size}x{args.size}, random weights; import {import_seconds:.1f} s; parity: " +
          "; ".join(f"{k} max|diff| {p['max_abs']:.2e} agreement {p['agreement']:.1f}%" for k, p in parity.items()))
    rows = [[r["images"], runtime, r["agreement"][runtime], r["clean"][runtime], r["robust"][runtime],
             f"{r['pgd_seconds_per_image']:.3f}", r["split_mb"], r["peak_rss_mb"],
             round(r["peak_rss_mb"] - r["rss_baseline_mb"], 1)]
            for r in runs for runtime in r["agreement"]]
    print(table(["images", "runtime", "agree w/ torch %", "clean %", f"robust % (PGD-{args.steps})",
                 "PGD s/image (torch)", "split MB", "peak RSS MB", "peak - baseline MB"], rows))
    atomic_write_json(Path(args.out), {"arch": args.arch, "size": args.size, "steps": args.steps,
                                       "batch_size": args.batch_size, "window": args.window or args.batch_size,
                                       "import_seconds": round(import_seconds, 2),
                                       "parity": parity, "runs": runs})


if __name__ == "__main__":
    main()
