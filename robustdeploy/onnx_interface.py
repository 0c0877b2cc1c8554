"""What an ONNX file from elsewhere must offer to be a deployment: a valid graph, one float image input with a
batch axis and a fixed size, one score per class out. Each problem is one line naming the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustdeploy.errors import RobustDeployError

MIN_OPSET = 7  # the oldest opset ONNX Runtime runs
FLOAT_TYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT, FLOAT16


@dataclass(frozen=True)
class OnnxInterface:
    input_name: str
    input_shape: tuple[int, int, int]
    input_dtype: str
    output_name: str
    opset: int


def _dims(value_info) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def inspect_onnx(path: Path) -> OnnxInterface:
    """Load and check `path`: onnx.checker, opset, one float (N, C, H, W) input, dynamic N, fixed C, H, W."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise RobustDeployError(f"{path} does not exist; give the ONNX file of the deployment")
    try:
        model = onnx.load(str(path), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise RobustDeployError(f"{path.name} keeps its weights in external data files; save it as one file "
                                    "(onnx.save(model, path, save_as_external_data=False)) to import it")
        onnx.checker.check_model(model, full_check=True)
    except (DecodeError, OSError, ValueError, onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RobustDeployError(f"{path.name} is not a valid ONNX model ({detail}); re-export it") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise RobustDeployError(f"{path.name} uses opset {opset}; ONNX Runtime needs {MIN_OPSET} or later, re-export "
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
    if isinstance(dims[0], int):
        raise RobustDeployError(f"{path.name}: input {first.name!r} has a fixed batch size {dims[0]}; export with a "
                                "dynamic batch axis (dynamic_axes={'input': {0: 'batch'}} or dynamic_shapes)")
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise RobustDeployError(f"{path.name}: input {first.name!r} has dynamic axes {dims[1:]} for (C, H, W); "
                                "export with a fixed input size (only the batch axis may be dynamic)")
    if not model.graph.output:
        raise RobustDeployError(f"{path.name} has no output; export the classifier's scores")
    return OnnxInterface(first.name, tuple(dims[1:]), FLOAT_TYPES[elem], model.graph.output[0].name, opset)


def output_meaning(scores: torch.Tensor, num_classes: int, name: str) -> str:
    """`logits` or `probabilities` (rows >= 0 summing to 1), after checking one score per class per image."""
    if scores.dim() != 2 or scores.shape[1] != num_classes:
        raise RobustDeployError(f"{name} outputs shape {list(scores.shape)} for {scores.shape[0]} images, not one "
                                f"score per class ({num_classes} classes); export the classifier's (N, "
                                f"{num_classes}) scores or give the matching --classes")
    if bool((scores >= 0).all()) and bool(((scores.sum(1) - 1).abs() < 1e-3).all()):
        return "probabilities"
    return "logits"
