"""Latency of each runtime/variant after warm-up: p50/p90/p99, throughput, memory, copy time apart, and every
timed run kept (the report draws their distributions)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import atomic_write_json, check_output, exclusive_outputs, read_document, versions
from robustdeploy.memory import check_fits
from robustdeploy.progress import pace, progress
from robustdeploy.runtimes import create_runtime
from robustdeploy.runtimes.ort import SessionOptions

log = logging.getLogger("robustdeploy")


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    runtimes: tuple[str, ...] = ("torch", "ort-cpu")
    batch_sizes: tuple[int, ...] = (1, 64)
    warmup: int = 10
    iterations: int = 100
    session: SessionOptions = field(default_factory=SessionOptions)
    device: str = "cpu"
    seed: int = 0
    out: Path | None = None


@dataclass(frozen=True)
class BenchRow:
    runtime: str
    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second at the median latency
    copy_ms: float | None  # host->device input copy (+ output back) when the runtime lives on a GPU
    peak_memory_mb: float | None  # what `memory_source` says: GPU memory on the runtime's device, or host RSS
    providers: list[str] | None
    samples_ms: list[float]  # every timed run, in order
    memory_source: str | None = None  # how peak_memory_mb was measured (or why it is missing)


@dataclass
class BenchResult:
    bundle: str
    rows: list[BenchRow]
    session_options: dict
    versions: dict = field(default_factory=versions)
    runtimes: list[dict] = field(default_factory=list)  # each runtime's describe(): providers, options, placement

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}


FORMAT = "robustdeploy-bench/2"


def load_bench(path: Path) -> BenchResult:
    """A benchmark written by `bench --out`, checked against its schema (robustdeploy/schemas/bench-2.json)."""
    if not Path(path).is_file():
        raise RobustDeployError(f"benchmark {path} not found; write one with `robustdeploy bench BUNDLE --out FILE`")
    data = read_document(Path(path), FORMAT, "re-run `robustdeploy bench BUNDLE --out FILE`")
    return BenchResult(data["bundle"], [BenchRow(**row) for row in data["rows"]], data["session_options"],
                       data["versions"], data.get("runtimes", []))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def memory(runtime) -> tuple[float | None, str]:
    """(MiB, how measured) for a runtime after its timed runs: torch's peak allocation on its GPU, NVML's count of
    this process's memory on the GPU an ONNX Runtime GPU session uses (torch's allocator does not see onnxruntime's),
    else the process's peak RSS."""
    device = getattr(runtime, "device", None)
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, f"torch max allocated on {device}"
    if getattr(runtime, "on_gpu", False):
        return gpu_memory_mb(runtime.device_id)
    return _peak_rss_mb(), "process peak RSS (VmHWM)"


def gpu_memory_mb(index: int) -> tuple[float | None, str]:
    """This process's memory on CUDA device `index`, from NVML (an optional import: nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return None, "unavailable: NVML bindings not installed (pip install nvidia-ml-py)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    physical = int(visible[index]) if index < len(visible) and visible[index].strip().isdigit() else index
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
        mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
    except pynvml.NVMLError as exc:
        return None, f"unavailable: NVML error on GPU {physical}: {exc}"
    if not mine or mine[0] is None:
        return None, f"unavailable: NVML lists no memory of this process on GPU {physical}"
    return mine[0] / 2**20, f"NVML, this process on GPU {physical}"


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@exclusive_outputs
def bench(config: BenchConfig) -> BenchResult:
    """Time every runtime at every batch size on random [0, 1] pixels of the bundle's input shape."""
    if config.warmup < 0 or config.iterations < 1:
        raise RobustDeployError("--warmup must be >= 0 and --iterations >= 1")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise RobustDeployError("--batch-size must be at least 1")
    config.session.validate()
    bundle = load_bundle(config.bundle)
    batch, values = max(config.batch_sizes), math.prod(bundle.input_shape)
    check_fits(f"--batch-size {batch}", 4 * batch * values, "give a smaller --batch-size", config.device)
    if config.out:
        check_output(Path(config.out), "--out")
    generator = torch.Generator().manual_seed(config.seed)
    rows, described, began = [], [], time.perf_counter()
    with torch_threads(config.session.intra_op_threads) as used_threads:
        _time_all(config, bundle, generator, rows, described, began)
    options = {**asdict(config.session), "torch_threads": used_threads}
    result = BenchResult(str(bundle.path), rows, options, runtimes=described)
    if config.out:
        atomic_write_json(Path(config.out), result.to_dict())
    return result


@contextlib.contextmanager
def torch_threads(threads: int):
    """PyTorch's intra-op threads set to `threads` (0: left as they are) while timing, so torch and ONNX Runtime
    are timed on the same thread count; yields the count in use."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _time_all(config: BenchConfig, bundle, generator: torch.Generator, rows: list, described: list,
              began: float) -> None:
    for name in config.runtimes:
        runtime = create_runtime(bundle, name, device=config.device, session_options=config.session,
                                 max_batch=max(config.batch_sizes))
        described.append(runtime.describe())
        for batch in config.batch_sizes:
            x = torch.rand(batch, *bundle.input_shape, generator=generator)
            call = runtime.timed_call(x)
            for _ in range(config.warmup):
                call.run()
            if getattr(runtime, "device", None) is not None and runtime.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(runtime.device)
            times = []
            for _ in progress(config.iterations, f"bench {runtime.label} batch {batch}", "run", lines=0,
                                  leave=False):
                start = time.perf_counter()
                call.run()
                times.append((time.perf_counter() - start) * 1000)
            p50 = _percentile(times, 50)
            used, source = memory(runtime)
            rows.append(BenchRow(
                runtime=runtime.label, batch_size=batch, iterations=config.iterations, p50_ms=p50,
                p90_ms=_percentile(times, 90), p99_ms=_percentile(times, 99), mean_ms=statistics.fmean(times),
                throughput=batch / (p50 / 1000),
                copy_ms=None if call.copy_seconds is None else call.copy_seconds * 1000,
                peak_memory_mb=used, providers=runtime.describe().get("providers"),
                samples_ms=[round(t, 5) for t in times], memory_source=source,
            ))
            total = len(config.runtimes) * len(config.batch_sizes)
            log.info("bench %s batch %d: p50 %.3f ms (row %d/%d, %s)", runtime.label, batch, p50, len(rows), total,
                     pace(len(rows), total, time.perf_counter() - began, "row"))


def bench_table_rows(result: BenchResult) -> list[list[object]]:
    return [[r.runtime, r.batch_size, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.throughput:.0f}",
             "-" if r.copy_ms is None else f"{r.copy_ms:.3f}",
             "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"] for r in result.rows]


BENCH_HEADERS = ["runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s", "copy ms", "peak MB"]
