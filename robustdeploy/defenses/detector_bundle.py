"""The squeeze detector inside a bundle: export `detector.onnx` (pixels -> logits, score, flag), check its
score against PyTorch, and run it on torch or on an ONNX Runtime provider (with the provider check)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from robustdeploy import devices
from robustdeploy.defenses.squeeze import SqueezeConfig, SqueezeDetector, build_squeeze, detector_scores
from robustdeploy.errors import CheckFailed, RobustDeployError
from robustdeploy.io import raise_storage_error

if TYPE_CHECKING:
    from robustdeploy.bundle import Bundle

DETECTOR_FILE = "detector.onnx"
OUTPUTS = ("logits", "score", "flag")


@dataclass(frozen=True)
class ScoreTolerance:
    """Exported score vs PyTorch: max absolute difference and minimum decision agreement (percent)."""

    atol: float = 1e-4
    min_agreement: float = 99.0


def export_detector_onnx(detector: SqueezeDetector, input_shape: tuple[int, ...], path: Path, opset: int) -> None:
    import onnx

    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                detector.eval(), (example,), dynamo=True, input_names=["pixels"], output_names=list(OUTPUTS),
                opset_version=opset, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
                external_data=False,
            )
            program.save(str(path))
        except Exception as exc:  # exporter failures come in many types
            raise_storage_error(path, exc)
            raise RobustDeployError(f"detector export failed ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]})") from None
    onnx.checker.check_model(str(path), full_check=True)


def add_detector(folder: Path, model: torch.nn.Module, input_shape: tuple[int, ...], validation_x: torch.Tensor,
                 test_x: torch.Tensor, config: SqueezeConfig, opset: int,
                 tolerance: ScoreTolerance = ScoreTolerance()) -> dict:
    """Calibrate on validation pixels, write `folder/detector.onnx`, return the manifest's `detector` section."""
    detector, calibration_fpr = build_squeeze(model, validation_x, config)
    export_detector_onnx(detector, input_shape, folder / DETECTOR_FILE, opset)
    _, reference = detector_scores(detector, test_x)
    _, deployed, flag = OrtDetector(folder / DETECTOR_FILE, "ort-cpu").run(test_x)
    difference = (deployed - reference).abs()
    agreement = 100.0 * float((flag == (reference > detector.threshold)).float().mean())
    parity = {"runtime": "ort-cpu", "samples": len(test_x), "score_max_abs": float(difference.max()),
              "score_mean_abs": float(difference.mean()), "decision_agreement": agreement,
              "tolerance": asdict(tolerance),
              "passed": float(difference.max()) <= tolerance.atol and agreement >= tolerance.min_agreement}
    if not parity["passed"]:
        raise CheckFailed(f"detector parity failed, no bundle written: score max |diff| "
                          f"{parity['score_max_abs']:.2e} (atol {tolerance.atol:g}), decisions agree {agreement:.2f}%")
    return {"method": "squeeze", "file": DETECTOR_FILE, "outputs": list(OUTPUTS),
            "squeezers": [_describe(s) for s in detector.squeezers], "config": config.to_dict(),
            "threshold": detector.threshold, "target_fpr": config.target_fpr,
            "calibration": {"split": "val", "samples": len(validation_x), "fpr": calibration_fpr},
            "parity": parity}


def _describe(squeezer: torch.nn.Module) -> dict:
    name = type(squeezer).__name__
    value = {"BitDepth": "bits", "MedianFilter": "size", "Resample": "factor"}[name]
    return {"squeezer": name, value: getattr(squeezer, value)}


class OrtDetector:
    """The exported detector graph on one ONNX Runtime provider (refuses a silent CPU fallback)."""

    def __init__(self, path: Path, runtime: str = "ort-cpu", device: str = "cpu") -> None:
        from robustdeploy.runtimes.ort import PROVIDERS, device_id, open_session

        if runtime not in PROVIDERS:
            raise RobustDeployError(f"the detector runs on torch or {', '.join(PROVIDERS)}, not {runtime!r}")
        self.label = runtime
        self.session = open_session(path, runtime, device_id=device_id(device))

    def run(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [self.session.run(list(OUTPUTS), {"pixels": x[i : i + batch_size].numpy().astype(np.float32)})
                 for i in range(0, len(x), batch_size)]
        return tuple(torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(3))  # type: ignore


class TorchDetector:
    """The detector rebuilt in PyTorch from the bundle's reference weights and manifest."""

    label = "torch"

    def __init__(self, detector: SqueezeDetector, device: str = "cpu") -> None:
        self.detector, self.device = devices.place(detector, device), device

    def run(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, score = detector_scores(self.detector, x.to(self.device), batch_size)
        return logits.cpu(), score.cpu(), (score > self.detector.threshold).cpu()


def detector_section(bundle: Bundle) -> dict:
    section = bundle.manifest.get("detector")
    if not section:
        raise RobustDeployError(f"bundle {bundle.name!r} has no detector; re-export it with --detector squeeze")
    if section.get("file") not in bundle.manifest["files"]:
        raise RobustDeployError("the detector graph is not hashed in the manifest; refusing it")
    return section


def reference_detector(bundle: Bundle) -> SqueezeDetector:
    section = detector_section(bundle)
    return SqueezeDetector(bundle.reference_model(), SqueezeConfig(**section["config"]), section["threshold"])


def open_detector(bundle: Bundle, runtime: str, device: str = "cpu") -> TorchDetector | OrtDetector:
    """Run the bundle's detector on `torch` (reference weights) or on `ort-cpu`/`ort-cuda`/`ort-trt`."""
    if runtime == "torch":
        return TorchDetector(reference_detector(bundle), device)
    section = detector_section(bundle)
    from robustdeploy.bundle import check_onnx_file

    path = bundle.path / section["file"]
    check_onnx_file(path, bundle.path)
    return OrtDetector(path, runtime, device)
