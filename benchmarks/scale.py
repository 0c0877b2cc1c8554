"""Scale of an evaluation: peak memory at two test-split sizes with the same --window, the same evaluation held
in memory whole (one window), and wall time with 1 and with N torchrun processes.

A folder of 32x32 colour digits (scikit-learn digits, upsampled, tinted, with pixel noise so no two are equal) is
written to a temporary folder; a small CNN is trained on it with most images held out as the test split, and
exported. Each evaluation (PGD on torch + ort-cpu) runs in its own process; peak memory is that process's maximum
resident set (for torchrun: the largest rank). Prints a table, writes JSON.
Usage: python benchmarks/scale.py [--images 10000] [--sizes 1000 8000] [--window 1000] [--time-size 1000]
                                  [--procs 2] [--out F]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from robustdeploy.data import DataConfig
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json, versions
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig

ATTACK = ("--attack", "pgd", "--steps", "5", "--eps", "0.1", "--batch-size", "250")


def write_folder(root: Path, images: int, seed: int = 0) -> None:
    """`images` 32x32 RGB PNGs in class sub-folders: digits upsampled 4x, tinted, each with its own pixel noise."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        k = i % len(digits.target)
        base = np.kron(digits.images[k] / 16.0, np.ones((4, 4)))[..., None] * rng.uniform(0.5, 1.0, 3)
        pixels = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
        Image.fromarray((pixels * 255).round().astype(np.uint8), "RGB").save(
            root / str(digits.target[k]) / f"{i}.png")


def measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MiB of the largest process) of `command`, run in a fresh child."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def evaluate_command(bundle: Path, limit: int, out: Path, procs: int, window: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] \
        if procs > 1 else [sys.executable]
    return [*launcher, "-m", "robustdeploy", "-q", "evaluate", str(bundle), "--limit", str(limit), *ATTACK,
            "--window", str(window), "--out", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="images in the generated folder")
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 8000], help="test samples, memory runs")
    parser.add_argument("--window", type=int, default=500, help="--window of the memory and timing runs")
    parser.add_argument("--time-size", type=int, default=1000, help="test samples of the timing runs")
    parser.add_argument("--procs", type=int, default=2, help="processes of the distributed timing run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder / "images", args.images)
        data = DataConfig(name="imagefolder", data_root=str(folder / "images"), val_fraction=0.05,
                          test_fraction=0.8)
        train(TrainConfig(arch="cnn", data=data, epochs=2), folder / "run")
        bundle = folder / "bundle"
        export_bundle(ExportConfig(run_dir=folder / "run", out=bundle))
        rows = []

        def run(kind: str, size: int, procs: int, window: int) -> None:
            out = folder / f"{kind}-{size}-{procs}-{window}.json"
            seconds, peak = measured(evaluate_command(bundle, size, out, procs, window))
            rows.append({"run": kind, "test samples": size, "window": window, "processes": procs,
                         "seconds": round(seconds, 1), "peak MiB": round(peak, 1),
                         "result MiB": round(out.with_suffix(".adv.safetensors").stat().st_size / 2**20, 2)})

        for size in args.sizes:
            run("memory", size, 1, args.window)
        run("memory, one window", max(args.sizes), 1, max(args.sizes))
        for procs in (1, args.procs):
            run("time", args.time_size, procs, args.window)
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    print(f"images 3x32x32 (12 KiB each as float32), attack {' '.join(ATTACK)}, runtimes torch + ort-cpu, "
          f"{os.cpu_count()} CPU cores; total {time.perf_counter() - start:.0f} s")
    atomic_write_json(args.out, {"rows": rows, "attack": list(ATTACK), "images": args.images,
                                 "cpu_count": os.cpu_count(), "versions": versions(),
                                 "self_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


if __name__ == "__main__":
    main()
