"""A PyTorch graph for an ONNX file that came without one: onnx2torch for gradients, ONNX Runtime for scores only.

onnx2torch 1.5 knows operator versions up to opset 17 and refuses `Reshape(allowzero=1)`; torch's dynamo exporter
writes opset 18 to 20 and allowzero=1 on every reshape. So a newer graph is first lowered to opset 17 with ONNX's
version converter, and with a target shape that holds no 0 allowzero changes nothing (it only matters for a 0 in the
shape), so such nodes are rewritten to allowzero=0. torch's TorchScript exporter shares equal weights through
`Identity` nodes, where onnx2torch's Conv wants an initializer: such Identity nodes are bypassed. Model-zoo graphs
(CNTK-era MNIST, ShuffleNet) pad with `auto_pad=SAME_UPPER`, which onnx2torch refuses: it becomes the explicit pads
ONNX's operator spec defines for it. A graph with a fixed batch (1 in most zoo files) gets a dynamic batch axis and
its Reshape targets `[B, d1, ...]` become `[-1, d1, ...]` (the same shape at batch B), so the twin batches freely;
where that is not enough the twin runs the fixed batch slice by slice (`FixedBatch`). Each rewrite applied is
recorded (`twin_graph`) in the manifest. Targets computed at run time cannot be read here; the converted graph's
parity with the untouched deployment graph on ONNX Runtime, measured at import, decides whether it is trusted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.models import Classifier
from robustdeploy.onnx_interface import fixed_batches, graph_opset
from robustdeploy.preprocess import Preprocessing


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of the main graph, by name."""
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


CONVERTER_OPSET = 17


def lowered(model):
    """`model` at opset 17 when it is newer and ONNX's version converter can lower it; else unchanged."""
    from onnx import version_converter

    opset = graph_opset(model)
    if opset <= CONVERTER_OPSET:
        return model
    try:
        return version_converter.convert_version(model, CONVERTER_OPSET)
    except Exception:  # no adapter for some operator: let onnx2torch try the original and name what it lacks
        return model


def without_constant_identities(model):
    """A copy of `model` whose nodes read initializers directly instead of through `Identity(initializer)`."""
    model = type(model).FromString(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs}
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def without_allowzero(model):
    """A copy of `model` with `Reshape(allowzero=1)` set to 0 wherever the target shape cannot hold a 0."""
    model = type(model).FromString(model.SerializeToString())
    constants = _constants(model)
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        target = constants.get(node.input[1])
        if target is not None and (target == 0).any():
            continue
        for attr in node.attribute:
            if attr.name == "allowzero":
                attr.i = 0
    return model


PADDED = ("Conv", "MaxPool", "AveragePool", "LpPool")


def _spatial_shapes(model) -> dict[str, list[int]]:
    """Inferred shapes of the graph's tensors, by name, where every dimension is known."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    return shapes


def explicit_pads(model):
    """A copy of `model` whose Conv/pooling nodes with `auto_pad` SAME_UPPER, SAME_LOWER or VALID carry the explicit
    `pads` the ONNX operator spec defines for them (output ceil(in / stride); SAME_UPPER puts the odd pixel at the
    end); with the number rewritten. Nodes whose input size shape inference cannot tell stay as they are."""
    from onnx import helper

    model = type(model).FromString(model.SerializeToString())
    shapes = _spatial_shapes(model)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET").decode()
        if node.op_type not in PADDED or mode == "NOTSET" or node.input[0] not in shapes:
            continue
        size = shapes[node.input[0]][2:]
        kernel = attrs.get("kernel_shape") or (weights.get(node.input[1], [])[2:] if node.op_type == "Conv" else [])
        if not kernel or len(kernel) != len(size):
            continue
        strides = attrs.get("strides") or [1] * len(size)
        dilations = attrs.get("dilations") or [1] * len(size)
        begins, ends = [], []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            total = 0 if mode == "VALID" else max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
            small, large = total // 2, total - total // 2
            begins.append(small if mode != "SAME_LOWER" else large)
            ends.append(large if mode != "SAME_LOWER" else small)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", begins + ends)])
        count += 1
    return model, count


def constants_as_initializers(model):
    """A copy of `model` whose tensor-valued Constant nodes are initializers (onnx2torch reads Conv weights only from
    initializers; older exporters such as CNTK's write them as Constant nodes); with the number moved."""
    model = type(model).FromString(model.SerializeToString())
    outputs = {o.name for o in model.graph.output}
    moved = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in outputs
             and len(n.attribute) == 1 and n.attribute[0].name == "value"]
    for node in moved:
        tensor = type(node.attribute[0].t)()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
    kept = [n for n in model.graph.node if all(n is not m for m in moved)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    if moved:
        model.ir_version = max(model.ir_version, 4)  # IR 4 on: initializers need not be listed as graph inputs
    return model, len(moved)


def input_batch(model) -> int | None:
    """The fixed batch size of the graph's image input; None where its batch axis is dynamic."""
    initializers = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initializers)
    dim = first.type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def free_batch(model):
    """A copy of `model` whose fixed input batch B is a dynamic axis, with each constant Reshape target [B, d1, ...]
    (all d > 0) written [-1, d1, ...] (the same shape at batch B); returns (model, B), B None where the batch was
    already dynamic."""
    from onnx import numpy_helper

    batch = input_batch(model)
    if batch is None:
        return model, None
    model = type(model).FromString(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initializers)
    for value in [first, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]  # inferred shapes that name the fixed batch
    constants = _constants(model)
    for node in model.graph.node:
        target = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        if target is None or target.ndim != 1 or len(target) < 2 or target[0] != batch or (target[1:] <= 0).any():
            continue
        name = f"{node.input[1]}_free_batch"
        model.graph.initializer.append(numpy_helper.from_array(np.concatenate([[-1], target[1:]]).astype(np.int64),
                                                               name))
        node.input[1] = name
    return model, batch


def twin_graph(model, fixed_batch_twin: bool = False) -> tuple[object, list[dict]]:
    """`model` rewritten for onnx2torch, and the rewrites applied (what, why), for the manifest. With
    `fixed_batch_twin` a fixed batch stays fixed (the twin then runs it slice by slice)."""
    rewrites = []
    opset = graph_opset(model)
    model = lowered(model)
    if graph_opset(model) != opset:
        rewrites.append({"rewrite": "opset", "detail": f"opset {opset} lowered to {graph_opset(model)} (ONNX's "
                                                       "version converter; onnx2torch knows up to 17)"})
    model, moved = constants_as_initializers(model)
    if moved:
        rewrites.append({"rewrite": "constants", "detail": f"{moved} Constant nodes as initializers"})
    model, padded = explicit_pads(model)
    if padded:
        rewrites.append({"rewrite": "auto_pad", "detail": f"{padded} nodes' auto_pad written as explicit pads"})
    if not fixed_batch_twin:
        model, batch = free_batch(model)
        if batch is not None:
            rewrites.append({"rewrite": "batch", "detail": f"fixed batch {batch} made dynamic (Reshape targets "
                                                           f"[{batch}, ...] as [-1, ...])"})
    model = without_constant_identities(without_allowzero(model))
    return model, rewrites


class FixedBatch(torch.nn.Module):
    """A converted graph with a fixed batch, run slice by slice (the last padded, its padding dropped), so the
    twin takes any number of samples and gradients flow."""

    def __init__(self, net: torch.nn.Module, batch: int) -> None:
        super().__init__()
        self.net, self.batch = net, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, len(x), self.batch):
            part = x[start : start + self.batch]
            pad = self.batch - len(part)
            outs.append(self.net(torch.cat([part, part[-1:].expand(pad, *part.shape[1:])]) if pad else part)
                        [: len(part)])
        return torch.cat(outs)


def convert_onnx(path: Path, preprocessing: Preprocessing, fixed_batch_twin: bool = False) -> torch.nn.Module:
    """The ONNX graph at `path` (rewritten by `twin_graph`) as a differentiable PyTorch module taking [0, 1] pixels
    (normalising first when the graph expects normalised input). Raises RobustDeployError naming the converter's
    complaint."""
    import onnx

    return convert_model(onnx.load(str(path)), preprocessing, path.name, fixed_batch_twin)


def convert_model(model, preprocessing: Preprocessing, name: str, fixed_batch_twin: bool = False) -> torch.nn.Module:
    """`convert_onnx` of a loaded ONNX model; `name` names it in the error. With `fixed_batch_twin` a fixed batch
    stays fixed and the twin runs it slice by slice."""
    from onnx2torch import convert

    try:
        graph, _ = twin_graph(model, fixed_batch_twin)
        net = convert(graph)
    except Exception as exc:  # the converter raises NotImplementedError, KeyError, ... for what it lacks
        raise RobustDeployError(f"onnx2torch cannot convert {name} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None
    batch = input_batch(model) if fixed_batch_twin else None
    return _pixels(FixedBatch(net, batch) if batch else net, preprocessing).eval()


def _pixels(net: torch.nn.Module, preprocessing: Preprocessing) -> torch.nn.Module:
    if preprocessing.normalisation == "outside":
        return Classifier(net, preprocessing.mean, preprocessing.std)
    return net


class OnnxScores(torch.nn.Module):
    """An ONNX graph run by ONNX Runtime on the CPU behind a module's interface: scores, no gradients. The
    reference graph of a score-only bundle, so clean scoring and black-box attacks work where conversion failed."""

    def __init__(self, path: Path, preprocessing: Preprocessing) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) else None
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RobustDeployError("this bundle is score-only (its ONNX graph has no PyTorch twin); gradient "
                                    "attacks cannot run on it")
        if self.preprocessing.normalisation == "outside":
            x = self.preprocessing.normalise(x)
        out = fixed_batches(lambda part: self.session.run(None, {self.input_name: part})[0],
                            x.detach().cpu().float().numpy(), self.batch)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)
