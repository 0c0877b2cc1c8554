"""Re-score any result from its stored examples alone, with the scorer that produced its cells."""

from __future__ import annotations

from pathlib import Path

from robustdeploy.bundle import load_bundle
from robustdeploy.evaluation.classify import classify_cells
from robustdeploy.evaluation.plans.defense import baseline_runner, defense_cells
from robustdeploy.evaluation.plans.detector import detect_cells, open_detectors
from robustdeploy.evaluation.plans.diff import diff_cells
from robustdeploy.evaluation.plans.patch import patch_cells, patch_runners
from robustdeploy.evaluation.results import load_result
from robustdeploy.evaluation.score import runners
from robustdeploy.runtimes import RuntimeSpec, create_runtime
from robustdeploy.runtimes.torch import TorchRuntime


def rescore(path: Path, device: str = "cpu", batch_size: int = 256) -> list[dict]:
    """The cells of the result at `path`, recomputed from its stored examples by the scorer it names."""
    result, stored = load_result(path)
    if result.scorer == "target":
        return patch_cells(result, stored, patch_runners(result, stored["x"][:256], device), batch_size)
    bundle = load_bundle(Path(result.bundle))
    if result.scorer == "detect":
        return detect_cells(result, stored, open_detectors(bundle, result.runtime_labels(), device), batch_size)
    opened = {label: create_runtime(bundle, label, device=device) for label in result.runtime_labels()}
    opened.setdefault("torch", TorchRuntime(RuntimeSpec("torch"), bundle.reference_model(), device))
    if result.kind == "defense":
        baseline = baseline_runner(bundle, result.extra["oblivious_source"], device, batch_size)
        return defense_cells(result, stored, runners(opened.values(), batch_size), baseline)
    if result.scorer == "diff":
        return diff_cells(result, stored, runners(opened.values(), batch_size))
    return classify_cells(result, stored, runners(opened.values(), batch_size))
