"""Where in the graph a deployment starts to disagree with its reference, as Polygraphy compares every layer
(`polygraphy run --onnx-outputs mark all`): the tensors both ONNX graphs compute are added as graph outputs, both
run on the same input, and each tensor's departure is measured in its own scale. Reported per input: the first
tensor (in the reference's topological order) that departs beyond the tolerance, and the nodes that add the most
departure over their inputs, each mapped to the PyTorch module whose parameters it uses where names allow."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

TOLERANCE = 0.05  # a tensor departs when max |deployment - reference| exceeds this share of its largest |reference|


@dataclass(frozen=True)
class Departure:
    """One tensor's departure on one input: `error` relative to the tensor's scale, `added` over its inputs'."""

    tensor: str
    node: str
    op: str
    module: str | None
    error: float
    added: float


@dataclass
class Location:
    sample: int
    first: Departure | None  # None: no shared tensor departs beyond the tolerance (only the logits differ)
    top: list[Departure] = field(default_factory=list)

    def line(self) -> str:
        def name(d: Departure) -> str:
            return f"{d.node} ({d.op}{', ' + d.module if d.module else ''})"
        first = (f"first departs at {name(self.first)}: {self.first.error:.3f} of its scale" if self.first
                 else "no shared tensor departs beyond the tolerance")
        top = ", ".join(f"{name(d)} +{d.added:.3f}" for d in self.top)
        return f"sample {self.sample}: {first}; most added: {top}"


def module_of(node: onnx.NodeProto, initializers: set[str]) -> str | None:
    """The PyTorch module a node belongs to: from the dynamo exporter's `namespace` metadata (`.../net.7:
    torch.nn.modules.linear.Linear/linear: aten.linear.default` -> `net.7`), else its parameters' names
    (`net.7.weight` -> `net.7`), else a TorchScript-style node name (`/net/net.0/Conv`)."""
    meta = {p.key: p.value for p in node.metadata_props}
    modules = [part.split(":")[0].strip() for part in meta.get("namespace", "").split("/")
               if ":" in part and not part.split(":", 1)[1].strip().startswith("aten.")]
    if [m for m in modules if m]:
        return [m for m in modules if m][-1]
    for name in node.input:
        if name in initializers and name.rsplit(".", 1)[-1] in ("weight", "bias"):
            return name.rsplit(".", 1)[0]
    if node.name.startswith("/") and node.name.count("/") > 1:
        return node.name.strip("/").rsplit("/", 1)[0].split("/")[-1]
    return None


def float_tensors(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every float node output of the graph (shape-inferred), by name, in topological order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    info = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    outputs = [o for n in model.graph.node for o in n.output]
    return {o: info[o] for o in outputs
            if o in info and info[o].type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def exposed(model: onnx.ModelProto, names: list[str], folder: Path) -> Path:
    """A copy of `model` that also outputs the tensors `names`, written into `folder`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    info = float_tensors(copy)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend([info[n] for n in dict.fromkeys(names) if n not in have])
    path = folder / f"exposed-{len(list(folder.iterdir()))}.onnx"
    onnx.save(copy, str(path))
    return path


@dataclass
class Graphs:
    """The reference's and the deployment's ONNX graphs and how to open a session on each."""

    reference: onnx.ModelProto
    deployment: onnx.ModelProto
    open_reference: Callable[[Path], object]  # path -> InferenceSession
    open_deployment: Callable[[Path], object]
    prepare: Callable[[torch.Tensor, object], np.ndarray]  # pixels in [0, 1], session -> the graph's input array


def as_consumed(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor -> the tensor its consumers read: a QDQ graph's `T -> QuantizeLinear -> DequantizeLinear` is read as
    the DequantizeLinear output (and a `T` before a quantised ReLU is the pre-activation, which the Q clamps)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    alias = {}
    for name, nodes in consumers.items():
        if len(nodes) == 1 and nodes[0].op_type == "QuantizeLinear":
            after = consumers.get(nodes[0].output[0], [])
            if len(after) == 1 and after[0].op_type == "DequantizeLinear":
                alias[name] = after[0].output[0]
    return alias


def shared(graphs: Graphs) -> list[tuple[str, str]]:
    """(reference tensor, deployment tensor) pairs both graphs compute, by name (the deployment's as its consumers
    read it), in the reference's order; graph inputs and initializers are not compared."""
    theirs, alias = float_tensors(graphs.deployment), as_consumed(graphs.deployment)
    return [(n, alias.get(n, n)) for n in float_tensors(graphs.reference) if n in theirs]


def intermediates(session, names: list[str], array: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float32) for v in session.run(names, {session.get_inputs()[0].name: array})]


def locate(graphs: Graphs, x: torch.Tensor, samples: list[int], tolerance: float = TOLERANCE,
           top: int = 3) -> list[Location]:
    """For each input `x[i]` (sample ids `samples`): the first shared tensor departing beyond `tolerance` and the
    `top` nodes that add most departure over their inputs."""
    pairs = shared(graphs)
    names, theirs = [a for a, _ in pairs], [b for _, b in pairs]
    producers = {o: n for n in graphs.reference.graph.node for o in n.output}
    initializers = {i.name for i in graphs.reference.graph.initializer}
    parents = {t: _compared_inputs(producers[t], producers, set(names)) for t in names}
    with tempfile.TemporaryDirectory() as folder:
        ref = graphs.open_reference(exposed(graphs.reference, names, Path(folder)))
        dep = graphs.open_deployment(exposed(graphs.deployment, theirs, Path(folder)))
        found = []
        for sample, xi in zip(samples, x):
            a = dict(zip(names, intermediates(ref, names, graphs.prepare(xi[None], ref))))
            b = dict(zip(names, intermediates(dep, theirs, graphs.prepare(xi[None], dep))))
            error = {n: float(np.abs(b[n] - a[n]).max() / max(float(np.abs(a[n]).max()), 1e-6)) for n in names}
            rows = [Departure(n, producers[n].name, producers[n].op_type, module_of(producers[n], initializers),
                              round(error[n], 6), round(error[n] - max((error[p] for p in parents[n]), default=0.0), 6))
                    for n in names]
            first = next((d for d in rows if d.error > tolerance), None)
            found.append(Location(sample, first, sorted(rows, key=lambda d: -d.added)[:top]))
    return found


def _compared_inputs(node: onnx.NodeProto, producers: dict, compared: set[str]) -> set[str]:
    """The nearest compared tensors upstream of `node`'s inputs (through nodes whose outputs are not compared)."""
    found, stack, seen = set(), list(node.input), set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in compared:
            found.add(name)
        elif name in producers:
            stack.extend(producers[name].input)
    return found
