"""Latency of the built-in CNN and timm models of the registry: torch and ort-cpu fp32/fp16/int8.

Bundles are built in a temporary folder (timm models trained one epoch on digits upsampled to 32x32: latency
does not depend on accuracy, so variant parity is recorded but not enforced). Prints a table, writes JSON.
Usage: python benchmarks/latency.py [--models cnn,timm:resnet18] [--batch-size 1 --batch-size 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from robustdeploy.bench import BENCH_HEADERS, BenchConfig, bench, bench_table_rows
from robustdeploy.data import DataConfig
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json, versions
from robustdeploy.parity import ParityTolerance
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig
from robustdeploy.variants import DEFAULT_TOLERANCES, VariantConfig

RUNTIMES = ("torch", "ort-cpu", "ort-cpu:fp16", "ort-cpu:int8")


def build(arch: str, folder: Path) -> Path:
    timm = arch.startswith("timm:")
    run = folder / arch.replace(":", "-")
    train(TrainConfig(arch=arch, data=DataConfig(image_size=32 if timm else None), epochs=1 if timm else 10), run)
    record_only = ParityTolerance(None, None, 0.0)
    variants = VariantConfig(("fp32", "fp16", "int8"), calibration_samples=64,
                             tolerances={**DEFAULT_TOLERANCES, "fp16": record_only, "int8": record_only})
    out = folder / f"{run.name}-bundle"
    export_bundle(ExportConfig(run_dir=run, out=out, variants=variants, parity_limit=128))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,timm:resnet18,timm:mobilenetv3_small_100")
    parser.add_argument("--batch-size", type=int, action="append")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = parser.parse_args()
    results = {"versions": versions(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            bundle = build(arch, Path(tmp))
            result = bench(BenchConfig(bundle, RUNTIMES, tuple(args.batch_size or (1, 64)),
                                       iterations=args.iterations))
            print(f"\n{arch}\n{table(BENCH_HEADERS, bench_table_rows(result))}")
            results["models"][arch] = result.to_dict()
    atomic_write_json(args.out, results)
    print(f"\nresults -> {args.out}")


if __name__ == "__main__":
    main()
