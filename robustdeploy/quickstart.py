"""The main job on the built-in data: train a small CNN on digits, export it, evaluate PGD on torch and ort-cpu."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from robustdeploy.data import DataConfig
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.results import Result
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.recipe import train
from robustdeploy.report import evaluation_table
from robustdeploy.train import TrainConfig


def quickstart(workdir: Path = Path("quickstart"), epochs: int = 15, epsilons: tuple[float, ...] = (0.05, 0.1, 0.2),
               seed: int = 0, echo: Callable[[str], None] = print) -> Result:
    """Run the whole path under `workdir` (replacing its own earlier outputs); `echo` receives progress lines."""
    start = time.perf_counter()
    workdir = Path(workdir)
    run_dir, bundle_dir = workdir / "runs" / "cnn-digits", workdir / "export" / "cnn-digits"
    result_file = workdir / "results" / "cnn-digits-pgd.json"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the quickstart owns its folder and starts afresh
    record = train(TrainConfig(arch="cnn", data=DataConfig(seed=seed), epochs=epochs, seed=seed), run_dir)
    echo(f"1/3 trained cnn on digits: test accuracy {record.metrics['test_accuracy']:.2f}% -> {run_dir}")
    bundle, parity = export_bundle(ExportConfig(run_dir=run_dir, out=bundle_dir, force=True))
    echo(f"2/3 exported -> {bundle.path}\n    {parity.summary()}")
    result = evaluate(EvalConfig(bundle=bundle_dir, epsilons=tuple(epsilons), seed=seed, out=result_file))
    echo(f"3/3 PGD (L-inf, 40 steps, on the 8-bit grid) on {result.samples} test samples:\n")
    echo(evaluation_table(result))
    echo(f"\nresults -> {result_file} (adversarial examples in {result.adversarial_file}, figure {result.figure})")
    echo(f"done in {time.perf_counter() - start:.1f}s")
    return result
