"""A PyTorch graph for an ONNX file that came without one: onnx2torch for gradients, ONNX Runtime for scores only.

onnx2torch 1.5 knows operator versions up to opset 17 and refuses `Reshape(allowzero=1)`; torch's dynamo exporter
writes opset 18 to 20 and allowzero=1 on every reshape. So a newer graph is first lowered to opset 17 with ONNX's
version converter, and with a target shape that holds no 0 allowzero changes nothing (it only matters for a 0 in the
shape), so such nodes are rewritten to allowzero=0. torch's TorchScript exporter shares equal weights through
`Identity` nodes, where onnx2torch's Conv wants an initializer: such Identity nodes are bypassed. Targets computed
at run time cannot be read here; the converted graph's parity with ONNX Runtime, measured at import, is what decides
whether it is trusted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.models import Classifier
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

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
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


def convert_onnx(path: Path, preprocessing: Preprocessing) -> torch.nn.Module:
    """The ONNX graph at `path` as a differentiable PyTorch module taking [0, 1] pixels (normalising first when the
    graph expects normalised input). Raises RobustDeployError naming the converter's complaint."""
    import onnx

    return convert_model(lowered(onnx.load(str(path))), preprocessing, path.name)


def convert_model(model, preprocessing: Preprocessing, name: str) -> torch.nn.Module:
    """`convert_onnx` of a loaded (and lowered) ONNX model; `name` names it in the error."""
    from onnx2torch import convert

    try:
        net = convert(without_constant_identities(without_allowzero(model)))
    except Exception as exc:  # the converter raises NotImplementedError, KeyError, ... for what it lacks
        raise RobustDeployError(f"onnx2torch cannot convert {name} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None
    return _pixels(net, preprocessing).eval()


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
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RobustDeployError("this bundle is score-only (its ONNX graph has no PyTorch twin); gradient "
                                    "attacks cannot run on it")
        if self.preprocessing.normalisation == "outside":
            x = self.preprocessing.normalise(x)
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)
