"""ONNX Runtime deployments on CPU, CUDA and TensorRT, with a check of the providers a session really uses.

onnxruntime silently falls back to CPU when the CUDA or TensorRT provider fails to load; a run labelled
`ort-cuda` or `ort-trt` that would execute on the CPU is refused here instead of mislabelled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.preprocess import Preprocessing
from robustdeploy.runtimes.base import RUNTIMES, Runtime, RuntimeSpec, TimedCall

if TYPE_CHECKING:
    from robustdeploy.bundle import Bundle

PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionOptions:
    """ONNX Runtime session settings, recorded with every measurement."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"

    def build(self):
        import onnxruntime as ort

        if self.graph_optimization not in OPT_LEVELS:
            raise RobustDeployError(f"unknown graph optimisation level {self.graph_optimization!r}; "
                                    f"use one of {', '.join(OPT_LEVELS)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        options.log_severity_level = 3
        return options


def open_session(path: Path, runtime: str, options: SessionOptions | None = None, device_id: int = 0):
    """An InferenceSession on `runtime`'s providers (GPU ones on `device_id`); raises if the main provider is not
    really in use."""
    import onnxruntime as ort

    wanted = PROVIDERS[runtime]
    main = wanted[0]
    if main not in ort.get_available_providers():
        raise RobustDeployError(
            f"runtime {runtime!r} needs {main}, which this onnxruntime build lacks "
            f"(has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use ort-cpu"
        )
    ort.set_default_logger_severity(4)  # the fallback is reported below, in one line
    try:
        session = ort.InferenceSession(str(path), sess_options=(options or SessionOptions()).build(),
                                       providers=[p if p == "CPUExecutionProvider" else (p, {"device_id": device_id})
                                                  for p in wanted])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise RobustDeployError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
    finally:
        ort.set_default_logger_severity(2)
    used = session.get_providers()
    if main not in used:
        raise RobustDeployError(
            f"runtime {runtime!r} is not available on this machine: onnxruntime fell back to "
            f"{', '.join(used)} ({main} failed to load: needs an NVIDIA GPU with CUDA 13 and cuDNN 9"
            f"{' and TensorRT' if runtime == 'ort-trt' else ''}); run it on such a machine or use ort-cpu"
        )
    return session


class OrtRuntime(Runtime):
    """One ONNX graph of the bundle (a precision variant) on one execution provider."""

    capability = Capability.SCORES

    def __init__(self, spec: RuntimeSpec, path: Path, options: SessionOptions | None = None,
                 preprocessing: Preprocessing | None = None, device_id: int = 0) -> None:
        super().__init__(spec)
        self.options, self.device_id = options or SessionOptions(), device_id
        # a graph that expects normalised input gets it here, so every caller speaks [0, 1] pixels
        self.normalise = preprocessing.normalise if preprocessing and preprocessing.normalisation == "outside" \
            else None
        self.session = open_session(path, spec.name, self.options, device_id)
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        self.dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32

    def _array(self, x: torch.Tensor) -> np.ndarray:
        return (self.normalise(x) if self.normalise else x).numpy().astype(self.dtype, copy=False)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run([self.output_name], {self.input.name: self._array(x)})
        return torch.from_numpy(np.asarray(out[0], dtype=np.float32))

    def timed_call(self, x: torch.Tensor) -> TimedCall:
        """On CPU a plain run; on CUDA/TensorRT an I/O-bound run on device buffers, the copies timed apart."""
        import onnxruntime as ort

        array = self._array(x)
        if self.spec.name == "ort-cpu":
            return TimedCall(lambda: self.session.run([self.output_name], {self.input.name: array}), None)
        start = time.perf_counter()
        device_input = ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input.name, device_input)
        binding.bind_output(self.output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()
        copy = time.perf_counter() - start

        def run() -> None:
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return TimedCall(run, copy)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "runtime": self.label,
            "providers": self.session.get_providers(),
            "onnxruntime": ort.__version__,
            "session_options": self.options.__dict__,
        }


def _factory(name: str):
    def create(bundle: Bundle, spec: RuntimeSpec, session_options: SessionOptions | None = None,
               device: str = "cpu", **_: object) -> OrtRuntime:
        device_id = int(device.partition(":")[2] or 0)  # --device cuda:N (a torchrun rank's GPU) for CUDA/TRT
        return OrtRuntime(spec, bundle.variant_path(spec.variant), session_options, bundle.preprocessing, device_id)

    create.__doc__ = f"ONNX Runtime on {PROVIDERS[name][0]}"
    return create


for _name in PROVIDERS:
    RUNTIMES.register(_name)(_factory(_name))
