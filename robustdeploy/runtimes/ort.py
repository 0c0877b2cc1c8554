"""ONNX Runtime deployments on CPU, CUDA and TensorRT, with a check of the providers a session really uses.

onnxruntime silently falls back to CPU when the CUDA or TensorRT provider fails to load; a run labelled
`ort-cuda` or `ort-trt` that would execute on the CPU is refused here instead of mislabelled.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.onnx_interface import fixed_batches
from robustdeploy.preprocess import Preprocessing
from robustdeploy.runtimes.base import RUNTIMES, Runtime, RuntimeSpec, TimedCall

if TYPE_CHECKING:
    from robustdeploy.bundle import Bundle

PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
MAX_THREADS = 1024  # more intra-op threads than any machine has cores is a typo
OPT_LEVELS = ("disable", "basic", "extended", "all")
log = logging.getLogger("robustdeploy")


@dataclass(frozen=True)
class SessionOptions:
    """ONNX Runtime session settings, recorded with every measurement."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"

    def validate(self) -> None:
        """Refuse, before any work, settings ONNX Runtime would refuse or misread."""
        if self.graph_optimization not in OPT_LEVELS:
            raise RobustDeployError(f"unknown graph optimisation level {self.graph_optimization!r}; "
                                    f"use one of {', '.join(OPT_LEVELS)}")
        for option, value in (("--threads", self.intra_op_threads), ("inter-op threads", self.inter_op_threads)):
            if not 0 <= value <= MAX_THREADS:
                raise RobustDeployError(f"{option} {value} is outside [0, {MAX_THREADS}]; give 0 for ONNX Runtime's "
                                        f"default or a thread count (this machine has {os.cpu_count()} cores)")

    def build(self):
        import onnxruntime as ort

        self.validate()
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
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")  # see `placement`
        return options


def device_id(device: str) -> int:
    """The GPU index of a torch device string (`cuda:N`, a torchrun rank's GPU; 0 for `cuda` and `cpu`)."""
    return int(str(device).partition(":")[2] or 0)


def trt_cache() -> Path:
    """Where TensorRT engines and timing caches are kept between runs (ROBUSTDEPLOY_TRT_CACHE overrides)."""
    return Path(os.environ.get("ROBUSTDEPLOY_TRT_CACHE") or Path.home() / ".cache" / "robustdeploy" / "tensorrt")


def provider_options(runtime: str, device_id: int, input_name: str, input_shape: tuple[int, ...] | None,
                     max_batch: int) -> list:
    """The providers of `runtime` with their options: CUDA in full fp32 (no TF32) with a fixed convolution algorithm
    (so scores repeat run to run), TensorRT with its engine and timing caches and an optimisation profile over the
    dynamic batch (1 to `max_batch`)."""
    cuda = {"device_id": str(device_id), "use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
    cache = str(trt_cache())
    trt = {"device_id": str(device_id), "trt_engine_cache_enable": "1", "trt_engine_cache_path": cache,
           "trt_timing_cache_enable": "1", "trt_timing_cache_path": cache}
    if input_shape is not None:
        dims = "x".join(str(d) for d in input_shape)
        trt |= {"trt_profile_min_shapes": f"{input_name}:1x{dims}",
                "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{dims}",
                "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}"}
    chosen = {"CUDAExecutionProvider": cuda, "TensorrtExecutionProvider": trt}
    return [(p, chosen[p]) if p in chosen else p for p in PROVIDERS[runtime]]


@functools.cache
def preload() -> bool:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu needs (from the nvidia pip packages or torch's) before the
    first GPU session, as onnxruntime >= 1.21 recommends; False where this onnxruntime has no `preload_dlls`."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return False
    with captured_output():  # it reports what it could not find; the session load below says what matters
        ort.preload_dlls()
    return True


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """What onnxruntime prints while the block runs (its C++ log on stderr, its Python fallback notice on stdout),
    kept out of the terminal and handed back as lines once the block ends."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink, contextlib.redirect_stdout(io.StringIO()) as printed:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read().decode(errors="replace") + printed.getvalue()
            lines.extend(line for line in (ANSI.sub("", raw).strip() for raw in text.splitlines()) if line)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_failure(lines: list[str]) -> str:
    """onnxruntime's own reason for a provider that did not load, in one line (its log's prefixes dropped)."""
    marks = ("Failed to load library", "Failed to create", "EP Error")
    found = [line[min(line.find(m) for m in marks if m in line):] for line in lines if any(m in line for m in marks)]
    return "; ".join(dict.fromkeys(found))[:600] or "onnxruntime gave no reason"


def open_session(path: Path, runtime: str, options: SessionOptions | None = None, device_id: int = 0,
                 input_shape: tuple[int, ...] | None = None, max_batch: int = 256):
    """An InferenceSession on `runtime`'s providers (GPU ones on `device_id`); raises, with onnxruntime's own reason,
    if the main provider is not really in use. `input_shape` (without the batch) sets TensorRT's profile."""
    import onnxruntime as ort

    wanted = PROVIDERS[runtime]
    main = wanted[0]
    if main not in ort.get_available_providers():
        raise RobustDeployError(
            f"runtime {runtime!r} needs {main}, which this onnxruntime build lacks "
            f"(has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use ort-cpu"
        )
    if main != "CPUExecutionProvider":
        preload()
    name = graph_input(path) if runtime == "ort-trt" else ""  # TensorRT's profile names the graph's input
    try:
        with captured_output() as log:
            session = ort.InferenceSession(str(path), sess_options=(options or SessionOptions()).build(),
                                           providers=provider_options(runtime, device_id, name, input_shape,
                                                                      max_batch))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise RobustDeployError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
    used = session.get_providers()
    if main not in used:
        raise RobustDeployError(
            f"runtime {runtime!r} is not available on this machine: onnxruntime fell back to "
            f"{', '.join(used)} ({main} failed to load: {load_failure(log)}); it needs an NVIDIA GPU with CUDA 13 "
            f"and cuDNN 9{' and TensorRT 10' if runtime == 'ort-trt' else ''}: run it on such a machine or use "
            "ort-cpu"
        )
    return session


def graph_input(path: Path) -> str:
    """The name of the graph's (first) input, read without its weights."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {w.name for w in graph.initializer}
    return next(i.name for i in graph.input if i.name not in weights)


def placement(session) -> dict[str, list[str]] | None:
    """The graph's nodes per execution provider, as the session assigned them; None where onnxruntime cannot tell
    (before 1.23 it records no assignment)."""
    try:
        assigned = session.get_provider_graph_assignment_info()
    except (AttributeError, RuntimeError):
        return None
    nodes: dict[str, list[str]] = {}
    for part in assigned:
        nodes.setdefault(part.ep_name, []).extend(f"{n.name} ({n.op_type})" for n in part.get_nodes())
    return nodes or None


def check_placement(runtime: str, nodes: dict[str, list[str]] | None) -> list[str]:
    """The nodes a GPU runtime leaves on the CPU (logged; recorded by the runtime); refuses a runtime whose main
    provider got no node at all, which would be a CPU run under a GPU label."""
    main = PROVIDERS[runtime][0]
    if nodes is None or main == "CPUExecutionProvider":
        return []
    if not nodes.get(main):
        raise RobustDeployError(f"runtime {runtime!r} loaded {main} but onnxruntime assigned it no node of the graph "
                                f"({', '.join(f'{k}: {len(v)}' for k, v in nodes.items())}); use ort-cpu")
    on_cpu = nodes.get("CPUExecutionProvider", [])
    if on_cpu:
        log.warning("warning: runtime %s runs %d of %d nodes on the CPU: %s", runtime, len(on_cpu),
                    sum(len(v) for v in nodes.values()), ", ".join(on_cpu[:8]))
    return on_cpu


class OrtRuntime(Runtime):
    """One ONNX graph of the bundle (a precision variant) on one execution provider."""

    capability = Capability.SCORES

    def __init__(self, spec: RuntimeSpec, path: Path, options: SessionOptions | None = None,
                 preprocessing: Preprocessing | None = None, device_id: int = 0,
                 input_shape: tuple[int, ...] | None = None, max_batch: int = 256) -> None:
        super().__init__(spec)
        self.options, self.device_id = options or SessionOptions(), device_id
        # a graph that expects normalised input gets it here, so every caller speaks [0, 1] pixels
        self.normalise = preprocessing.normalise if preprocessing and preprocessing.normalisation == "outside" \
            else None
        self.session = open_session(path, spec.name, self.options, device_id, input_shape, max_batch)
        self.nodes = placement(self.session)
        self.cpu_nodes = check_placement(spec.name, self.nodes)
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        self.dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32
        # a graph with a fixed batch (many model-zoo files: 1) is fed that many samples a run
        self.batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None

    @property
    def on_gpu(self) -> bool:
        return self.spec.name != "ort-cpu"

    def _array(self, x: torch.Tensor) -> np.ndarray:
        return (self.normalise(x) if self.normalise else x).numpy().astype(self.dtype, copy=False)

    def _run(self, array: np.ndarray) -> np.ndarray:
        return fixed_batches(lambda part: self.session.run([self.output_name], {self.input.name: part})[0], array,
                             self.batch)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._run(self._array(x)), dtype=np.float32))

    def timed_call(self, x: torch.Tensor) -> TimedCall:
        """On CPU a plain run; on CUDA/TensorRT an I/O-bound run on device buffers. The copies are timed apart from
        any run: the input's host-to-device copy, and the output's copy back after a first (warm-up) run."""
        import onnxruntime as ort

        array = self._array(x)
        if not self.on_gpu or self.batch is not None:  # a fixed-batch graph runs slice by slice, copies included
            return TimedCall(lambda: self._run(array), None)
        start = time.perf_counter()
        device_input = ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
        upload = time.perf_counter() - start
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input.name, device_input)
        binding.bind_output(self.output_name, "cuda", self.device_id)

        def run() -> None:
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        run()
        start = time.perf_counter()
        binding.copy_outputs_to_cpu()
        return TimedCall(run, upload + time.perf_counter() - start)

    def describe(self) -> dict:
        import onnxruntime as ort

        found = {
            "runtime": self.label,
            "providers": self.session.get_providers(),
            "provider_options": self.session.get_provider_options(),
            "onnxruntime": ort.__version__,
            "session_options": self.options.__dict__,
            "node_placement": None if self.nodes is None else {k: len(v) for k, v in self.nodes.items()},
        }
        if self.on_gpu:
            found |= {"device_id": self.device_id, "cpu_nodes": self.cpu_nodes}
        return found


def _factory(name: str):
    def create(bundle: Bundle, spec: RuntimeSpec, session_options: SessionOptions | None = None,
               device: str = "cpu", max_batch: int = 256, **_: object) -> OrtRuntime:
        # --device cuda:N (a torchrun rank's GPU) for CUDA/TRT; TensorRT's profile spans batches 1..max_batch (none
        # for a graph with a fixed batch: its shapes are static)
        shape = None if bundle.graph_batch else tuple(bundle.input_shape)
        return OrtRuntime(spec, bundle.variant_path(spec.variant), session_options, bundle.preprocessing,
                          device_id(device), shape, max_batch)

    create.__doc__ = f"ONNX Runtime on {PROVIDERS[name][0]}"
    return create


for _name in PROVIDERS:
    RUNTIMES.register(_name)(_factory(_name))
