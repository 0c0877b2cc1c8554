"""Precision variants of a bundle's ONNX graph: fp16 (float32 I/O) and int8 (ONNX Runtime static QDQ quantisation)."""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustdeploy.bundle import MANIFEST
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import atomic_write_bytes, atomic_write_json, sha256_file
from robustdeploy.parity import ParityTolerance
from robustdeploy.thresholds import MIN_AGREEMENT

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# fp16 and int8 change logits by design: their parity is judged on top-1 agreement, elements are only recorded.
# Agreement thresholds are check's (robustdeploy.thresholds), so a variant export accepts is one check accepts.
DEFAULT_TOLERANCES = {
    "fp32": ParityTolerance(min_agreement=MIN_AGREEMENT["fp32"]),
    "fp16": ParityTolerance(atol=None, rtol=None, min_agreement=MIN_AGREEMENT["fp16"]),
    "int8": ParityTolerance(atol=None, rtol=None, min_agreement=MIN_AGREEMENT["int8"]),
}


@dataclass(frozen=True)
class VariantConfig:
    """How the non-fp32 variants are made; recorded in the manifest."""

    precisions: tuple[str, ...] = ("fp32",)
    calibration: str = "minmax"
    calibration_samples: int = 256
    per_channel: bool = True
    tolerances: dict[str, ParityTolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise RobustDeployError(f"unknown precision {unknown[0]!r}; use {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:
            raise RobustDeployError("a bundle always holds the fp32 graph; add --precision fp32")
        if self.calibration not in CALIBRATION_METHODS:
            raise RobustDeployError(f"unknown calibration method {self.calibration!r}; "
                                    f"use {', '.join(CALIBRATION_METHODS)}")
        if self.calibration_samples < 1:
            raise RobustDeployError("--calibration-samples must be at least 1")

    def recipe(self, precision: str) -> dict:
        if precision == "fp16":
            return {"method": "onnxruntime.transformers.float16", "keep_io_types": True}
        if precision == "int8":
            return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                    "weights": "int8", "activations": "int8", "per_channel": self.per_channel,
                    "calibration": self.calibration, "calibration_samples": self.calibration_samples,
                    "calibration_split": "train"}
        return {"method": "export"}


def make_fp16(src: Path, dst: Path) -> None:
    """Weights and compute in float16, inputs and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _topological_sort(model.graph)  # the converter appends its input casts after their consumers
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))


def _topological_sort(graph) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (Kahn's algorithm)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise RobustDeployError("fp16 conversion produced a graph with a cycle; export without fp16")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _graph_batch(path: Path) -> int:
    """The fixed batch size of the graph's input (an imported model-zoo graph's), else 1."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {w.name for w in graph.initializer}
    dim = next(i for i in graph.input if i.name not in weights).type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else 1


class _Reader:
    """CalibrationDataReader over a tensor of pixels, `batch` samples per call (whole batches only)."""

    def __init__(self, input_name: str, x: torch.Tensor, batch: int = 1) -> None:
        self._items = iter([{input_name: x[i : i + batch].numpy().astype(np.float32)}
                            for i in range(0, len(x) - batch + 1, batch)])

    def get_next(self):
        return next(self._items, None)


def make_int8(src: Path, dst: Path, calibration: torch.Tensor, config: VariantConfig, input_name: str,
              exclude: tuple[str, ...] = ()) -> None:
    """Static QDQ quantisation calibrated on `calibration` (a slice of the training split); the nodes named in
    `exclude` stay fp32 (onnxruntime's `nodes_to_exclude`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), _Reader(input_name, calibration, _graph_batch(src)),
                        quant_format=QuantFormat.QDQ,
                        per_channel=config.per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=list(exclude))


def variant_file(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def variant_entry(precision: str, config: VariantConfig, parity: dict) -> dict:
    return {"file": variant_file(precision), "precision": precision, "recipe": config.recipe(precision),
            "parity": parity}



def add_variant(bundle_dir: Path, name: str, source: Path, entry: dict) -> None:
    """Copy the graph `source` into a bundle as variant `name` and record it (entry, SHA-256) in its manifest."""
    file = variant_file(name)
    atomic_write_bytes(bundle_dir / file, Path(source).read_bytes())
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["variants"][name] = {**entry, "file": file}
    manifest["files"][file] = sha256_file(bundle_dir / file)
    atomic_write_json(bundle_dir / MANIFEST, manifest)
