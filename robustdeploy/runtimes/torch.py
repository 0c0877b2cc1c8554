"""The PyTorch reference graph rebuilt from the bundle: the only runtime with gradients."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from robustdeploy import devices
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.runtimes.base import RUNTIMES, Runtime, RuntimeSpec, TimedCall

if TYPE_CHECKING:
    from robustdeploy.bundle import Bundle


class TorchRuntime(Runtime):
    capability = Capability.GRADIENTS

    def __init__(self, spec: RuntimeSpec, model: torch.nn.Module, device: str = "cpu") -> None:
        super().__init__(spec)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RobustDeployError("runtime 'torch' on cuda asked for, but PyTorch sees no CUDA GPU")
        self.device = torch.device(device)
        self.numerics = devices.pin_numerics(device)
        self.model = devices.place(model, device)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).float().cpu()

    def timed_call(self, x: torch.Tensor) -> TimedCall:
        """A synchronised forward pass on `x` already on the device; on CUDA the input's copy to the device and the
        output's copy back (after a first, warm-up run) are timed apart."""
        start = time.perf_counter()
        device_x = x.to(self.device)
        self._sync()
        upload = time.perf_counter() - start

        def run() -> torch.Tensor:
            with torch.no_grad():
                out = self.model(device_x)
            self._sync()
            return out

        out = run()
        start = time.perf_counter()
        out.cpu()
        return TimedCall(run, upload + time.perf_counter() - start if self.device.type == "cuda" else None)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"runtime": self.label, "device": str(self.device), "torch": torch.__version__,
                "numerics": self.numerics}


@RUNTIMES.register("torch")
def torch_runtime(bundle: Bundle, spec: RuntimeSpec, device: str = "cpu", **_: object) -> TorchRuntime:
    """PyTorch fp32 reference graph (gradients, scores, decisions)."""
    if spec.variant != "fp32":
        raise RobustDeployError(f"runtime 'torch' has only the fp32 graph, not {spec.variant!r}; "
                                f"use e.g. 'ort-cpu:{spec.variant}'")
    if bundle.score_only:
        raise RobustDeployError(f"bundle {bundle.name!r} is score-only (its ONNX graph has no PyTorch twin), so it "
                                "has no runtime 'torch'; use -r ort-cpu")
    return TorchRuntime(spec, bundle.reference_model(), device)
