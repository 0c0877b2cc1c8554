"""ONNX export of a trained run into a self-contained, verified deployment bundle."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustdeploy import devices
from robustdeploy.bundle import BUNDLE_FORMAT, MANIFEST, Bundle, load_bundle
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.defenses.squeeze import SqueezeConfig
from robustdeploy.errors import CheckFailed, RobustDeployError
from robustdeploy.io import (
    atomic_write_json,
    check_output_dir,
    discard_staging,
    exclusive_outputs,
    raise_storage_error,
    sha256_file,
    staging_dir,
    versions,
)
from robustdeploy.models import ModelSpec
from robustdeploy.parity import ParityReport, ParityTolerance, compare_logits
from robustdeploy.preprocess import Preprocessing
from robustdeploy.runtimes.base import RuntimeSpec
from robustdeploy.runtimes.ort import OrtRuntime
from robustdeploy.train import load_run
from robustdeploy.variants import VariantConfig, make_fp16, make_int8, variant_entry, variant_file

log = logging.getLogger("robustdeploy")

INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class ExportConfig:
    run_dir: Path
    out: Path | None = None
    opset: int = 18
    exporter: str = "dynamo"
    tolerance: ParityTolerance = field(default_factory=ParityTolerance)
    variants: VariantConfig = field(default_factory=VariantConfig)
    data_root: str | None = None
    parity_limit: int | None = None
    force: bool = False
    detector: str | None = None
    squeeze: SqueezeConfig = field(default_factory=SqueezeConfig)


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path, opset: int,
                exporter: str) -> None:
    """Export `model` (pixels in [0, 1] -> logits) with a dynamic batch axis, then run onnx.checker."""
    import onnx

    if exporter not in EXPORTERS:
        raise RobustDeployError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    example = torch.rand(2, *input_shape)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=opset, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    verbose=False, external_data=False,
                )
                program.save(str(path))
            else:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME], opset_version=opset,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
        except Exception as exc:  # exporter failures come in many types
            raise_storage_error(path, exc)
            raise RobustDeployError(f"{exporter} exporter failed ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); try --exporter "
                                    f"{'torchscript' if exporter == 'dynamo' else 'dynamo'}") from None
    onnx.checker.check_model(str(path), full_check=True)


def check_parity(model: torch.nn.Module, onnx_path: Path, x: torch.Tensor, tolerance: ParityTolerance,
                 label: str = "ort-cpu", preprocessing: Preprocessing | None = None,
                 reference: str = "torch") -> ParityReport:
    """ONNX Runtime CPU against PyTorch (`model`, named `reference` in the report) on `x`."""
    runtime = OrtRuntime(RuntimeSpec("ort-cpu", label.partition(":")[2] or "fp32"), onnx_path,
                         preprocessing=preprocessing)
    with torch.no_grad():
        expected = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])
    return compare_logits(expected, runtime.logits(x), tolerance, runtime=label, reference_name=reference)


def build_variants(model: torch.nn.Module, tmp: Path, test_x: torch.Tensor, train_x: torch.Tensor,
                   config: VariantConfig, tolerance: ParityTolerance, input_name: str = INPUT_NAME,
                   preprocessing: Preprocessing | None = None,
                   reference: str = "torch") -> tuple[dict, list[ParityReport], ParityReport]:
    """Parity of `tmp/model.onnx` with `model`, then each precision variant built from it and checked: the variants'
    manifest entries, the reports that failed, and the fp32 report. `preprocessing` normalises ONNX inputs when the
    graph expects normalised input (an imported model's)."""
    parity = check_parity(model, tmp / "model.onnx", test_x, tolerance, preprocessing=preprocessing,
                          reference=reference)
    log.info("export: fp32 graph parity-checked")
    variants = {"fp32": variant_entry("fp32", config, parity.to_dict())}
    failed = [] if parity.passed else [parity]
    outside = preprocessing is not None and preprocessing.normalisation == "outside"
    for precision in config.precisions:
        if precision == "fp32":
            continue
        path = tmp / variant_file(precision)
        if precision == "fp16":
            make_fp16(tmp / "model.onnx", path)
        else:
            calibration = train_x[: config.calibration_samples]
            make_int8(tmp / "model.onnx", path, preprocessing.normalise(calibration) if outside else calibration,
                      config, input_name)
        report = check_parity(model, path, test_x, config.tolerances[precision], label=f"ort-cpu:{precision}",
                              preprocessing=preprocessing, reference=reference)
        log.info("export: %s variant built and parity-checked", precision)
        variants[precision] = variant_entry(precision, config, report.to_dict())
        failed += [] if report.passed else [report]
    return variants, failed, parity


def bundle_manifest(tmp: Path, *, name: str, spec: ModelSpec, classes: tuple[str, ...], variants: dict, data: dict,
                    reference: str, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME,
                    meaning: str = "logits", batch: int | None = None, **extra: object) -> dict:
    """The manifest of a bundle staged in `tmp`: graph interface (`batch`: the graph's fixed batch size, None when
    dynamic), variants, data, versions, and the SHA-256 of the reference and every variant file; `extra` adds
    sections (opset, run, preprocessing, gradients, ...)."""
    return {
        "format": BUNDLE_FORMAT,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec.to_dict(),
        "classes": list(classes),
        "input": {"name": input_name, "shape": [batch, *spec.input_shape], "dtype": "float32",
                  "range": [0.0, 1.0], "layout": "NCHW"},
        "output": {"name": output_name, "shape": [batch, spec.num_classes], "dtype": "float32", "meaning": meaning},
        "reference": reference,
        "variants": variants,
        "data": data,
        **extra,
        "versions": versions(),
        "files": {file: sha256_file(tmp / file) for file in dict.fromkeys([reference,
                                                                            *(v["file"] for v in variants.values())])},
    }


def finish_bundle(tmp: Path, out: Path, manifest: dict, failed: list[ParityReport]) -> Bundle:
    """Write the manifest; refuse a bundle whose parity failed; move the staged folder to `out` and verify it."""
    atomic_write_json(tmp / MANIFEST, manifest)
    if failed:
        raise CheckFailed(f"export parity check failed, no bundle written: {failed[0].summary()}")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return load_bundle(out)


@exclusive_outputs
def export_bundle(config: ExportConfig) -> tuple[Bundle, ParityReport]:
    """Write `export/<run name>/` (or `config.out`): ONNX graphs, reference weights, manifest with parity.

    Returns the verified bundle and the fp32 parity report (every variant's report is in the manifest).
    """
    model, record = load_run(config.run_dir)
    model = devices.place(model, "cpu")  # export and its parity checks run on the CPU
    out = Path(config.out) if config.out else Path("export") / record.name
    check_output_dir(out, "--out", config.force, "pass --force to replace it or choose --out")
    data_config = record.data if config.data_root is None else DataConfig(
        **{**record.data.to_dict(), "data_root": config.data_root})
    if config.detector is not None:
        from robustdeploy.defenses import DETECTORS

        DETECTORS.get(config.detector)
    dataset = load_dataset(data_config)
    test = dataset.test.head(config.parity_limit)
    tmp = staging_dir(out)
    try:
        start = time.perf_counter()
        export_onnx(model, record.spec.input_shape, tmp / "model.onnx", config.opset, config.exporter)
        shutil.copyfile(Path(config.run_dir) / "model.safetensors", tmp / "reference.safetensors")
        export_seconds = time.perf_counter() - start
        variants, failed, parity = build_variants(model, tmp, test.x, dataset.train.x, config.variants,
                                                  config.tolerance)
        manifest = bundle_manifest(
            tmp, name=record.name, spec=record.spec, classes=record.classes, variants=variants,
            data=data_config.to_dict() | {"split": "test", "samples": len(test)}, reference="reference.safetensors",
            opset=config.opset, exporter=config.exporter, run={"metrics": record.metrics, "train": record.train},
            export_seconds=round(export_seconds, 3))
        if config.detector is not None:
            from robustdeploy.defenses.detector_bundle import add_detector

            manifest["detector"] = add_detector(tmp, model, record.spec.input_shape, dataset.val.x, test.x,
                                                config.squeeze, config.opset)
            manifest["files"][manifest["detector"]["file"]] = sha256_file(tmp / manifest["detector"]["file"])
        bundle = finish_bundle(tmp, out, manifest, failed)
    except BaseException as exc:
        discard_staging(tmp, out, exc)
        raise
    return bundle, parity
