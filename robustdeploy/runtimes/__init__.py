"""Runtime registry: batched logits from [0, 1] pixels on PyTorch or an ONNX Runtime deployment."""

from robustdeploy.runtimes import ort as _ort  # noqa: F401  (registers ort-*)
from robustdeploy.runtimes import torch as _torch  # noqa: F401  (registers torch)
from robustdeploy.runtimes.base import (
    RUNTIMES,
    Capability,
    Runtime,
    RuntimeSpec,
    create_runtime,
    parse_runtime,
)

__all__ = ["RUNTIMES", "Capability", "Runtime", "RuntimeSpec", "create_runtime", "parse_runtime"]
