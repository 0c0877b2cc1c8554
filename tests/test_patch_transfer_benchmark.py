"""benchmarks/patch_transfer.py's core on a tiny setting: rows per seed x method x source x target x runtime, and
summaries that are the means and paired differences of those rows."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

from robustdeploy.attacks.ot_patch import PatchConfig
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.recipe import train
from robustdeploy.train import TrainConfig


def _benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "patch_transfer.py"
    spec = importlib.util.spec_from_file_location("patch_transfer", path)
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_patch_transfer_core_on_two_tiny_models(bundle_dir, tmp_path):
    bench = _benchmark()
    train(TrainConfig(arch="mlp", epochs=1), tmp_path / "mlp")
    mlp, _ = export_bundle(ExportConfig(run_dir=tmp_path / "mlp", out=tmp_path / "bundle-mlp"))
    saved = []
    patch = PatchConfig(target=3, steps=2, batch_size=32, n_projections=50, patch_size=0.25, tv_weight=0.1,
                        scale=(0.8, 1.2))
    config = bench.TransferConfig(patch, seeds=(0, 1), limit=30)
    rows = bench.craft_and_score([bundle_dir, mlp.path], config, tmp_path, lambda found: saved.append(len(found)))
    assert len(rows) == 2 * 2 * 2 * 2 * 2 and saved == [16, 32]
    assert {(r["source"], r["target"]) for r in rows} == {(a, b) for a in ("cnn-digits", "mlp") for b in
                                                         ("cnn-digits", "mlp")}
    summary = bench.summarise(rows)["runtimes"]["torch"]
    for method in ("sw", "ce"):
        transfer = [statistics.fmean(r["tsuc"] for r in rows if r["runtime"] == "torch" and r["method"] == method
                                     and r["seed"] == seed and r["source"] != r["target"]) for seed in (0, 1)]
        assert summary["per_seed"][method]["transfer"] == transfer
    assert summary["diff_per_seed"]["white_box"] == [
        sw - ce for sw, ce in zip(summary["per_seed"]["sw"]["white_box"], summary["per_seed"]["ce"]["white_box"])]
    assert sum(summary["transfer_pairs"].values()) == 4
    assert (tmp_path / "sw-cnn-digits-seed1.json").is_file()
