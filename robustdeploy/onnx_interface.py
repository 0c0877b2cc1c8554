"""What an ONNX file from elsewhere must offer to be a deployment: a valid graph, one float image input with a
batch axis (dynamic, or fixed as in many model-zoo files) and a fixed size, one score per class out, weights inline or
in external-data files inside the model's folder. Each problem is one line naming the fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.onnx_files import external_files

MIN_OPSET = 7  # the oldest opset ONNX Runtime runs; older graphs are upgraded (importer.deployment_graph)
FLOAT_TYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT, FLOAT16


@dataclass(frozen=True)
class OnnxInterface:
    input_name: str
    input_shape: tuple[int, int, int]
    input_dtype: str
    output_name: str
    opset: int
    batch: int | None = None  # the graph's fixed batch size; None where the batch axis is dynamic
    external: tuple[str, ...] = ()  # external-data files, relative to the model's folder

    @property
    def fixed_batch(self) -> bool:
        return self.batch is not None


def _dims(value_info) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def inspect_onnx(path: Path, min_opset: int = MIN_OPSET) -> OnnxInterface:
    """Load and check `path`: onnx.checker, opset, external data inside its folder, one float (N, C, H, W) input,
    fixed C, H, W (N dynamic or fixed)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise RobustDeployError(f"{path} does not exist; give the ONNX file of the deployment")
    try:
        model = onnx.load(str(path), load_external_data=False)
        external = external_files(path, model)
        # by path where weights are external (the checker reads them there, and a graph over 2 GB has no one-proto
        # form); its shape inference cannot read external tensors, so the full check is for one-file graphs
        onnx.checker.check_model(str(path)) if external else onnx.checker.check_model(model, full_check=True)
    except (DecodeError, OSError, ValueError, onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RobustDeployError(f"{path.name} is not a valid ONNX model ({detail}); re-export it") from None
    opset = graph_opset(model)
    if opset < min_opset:
        raise RobustDeployError(f"{path.name} uses opset {opset}; ONNX Runtime needs {min_opset} or later, re-export "
                                "with a newer opset")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise RobustDeployError(f"{path.name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                "robustdeploy feeds one image batch, export a graph with one (N, C, H, W) input")
    first = inputs[0]
    if not first.type.HasField("tensor_type"):
        raise RobustDeployError(f"{path.name}: input {first.name!r} is not a tensor; export a graph with one "
                                "(N, C, H, W) float input")
    elem = first.type.tensor_type.elem_type
    if elem not in FLOAT_TYPES:
        kind = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else "unknown"
        raise RobustDeployError(f"{path.name}: input {first.name!r} is {kind}, not float; robustdeploy feeds float "
                                "pixels, export the graph with a float32 input (cast inside the graph)")
    dims = _dims(first)
    if len(dims) != 4 or (isinstance(dims[1], int) and not 1 <= dims[1] <= 4):
        raise RobustDeployError(f"{path.name}: input {first.name!r} has shape {dims}, not an image batch "
                                "(N, C, H, W) with 1 to 4 channels; export an image classifier's graph")
    if isinstance(dims[0], int) and dims[0] < 1:
        raise RobustDeployError(f"{path.name}: input {first.name!r} has batch size {dims[0]}; export a graph that "
                                "takes at least one image")
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise RobustDeployError(f"{path.name}: input {first.name!r} has dynamic axes {dims[1:]} for (C, H, W); "
                                "export with a fixed input size (only the batch axis may be dynamic)")
    if not model.graph.output:
        raise RobustDeployError(f"{path.name} has no output; export the classifier's scores")
    return OnnxInterface(first.name, tuple(dims[1:]), FLOAT_TYPES[elem], model.graph.output[0].name, opset,
                         dims[0] if isinstance(dims[0], int) else None, external)


def graph_opset(model) -> int:
    """The default-domain opset a loaded ONNX model imports (0 where it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fixed_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int | None) -> np.ndarray:
    """`run` over `x` in slices of the graph's fixed `batch` (the last slice padded by repeating its final sample,
    the padding's outputs dropped); `run(x)` once where the batch is dynamic (`batch` None)."""
    if batch is None:
        return run(x)
    outs = []
    for start in range(0, len(x), batch):
        part = x[start : start + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
        outs.append(np.asarray(run(part))[: min(batch, len(x) - start)])
    return np.concatenate(outs)


def output_meaning(scores: torch.Tensor, num_classes: int, name: str) -> str:
    """`logits` or `probabilities` (rows >= 0 summing to 1), after checking one score per class per image."""
    if scores.dim() != 2 or scores.shape[1] != num_classes:
        raise RobustDeployError(f"{name} outputs shape {list(scores.shape)} for {scores.shape[0]} images, not one "
                                f"score per class ({num_classes} classes); export the classifier's (N, "
                                f"{num_classes}) scores or give the matching --classes")
    if bool((scores >= 0).all()) and bool(((scores.sum(1) - 1).abs() < 1e-3).all()):
        return "probabilities"
    return "logits"
