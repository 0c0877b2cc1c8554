import os
import sys
import types

import pytest
import torch

from robustdeploy.bench import BenchConfig, bench, gpu_memory_mb, load_bench
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation import shards
from robustdeploy.runtimes import Capability, create_runtime
from robustdeploy.runtimes.ort import check_placement, open_session, provider_options

onnxruntime = pytest.importorskip("onnxruntime")


def _cuda_really_works(path) -> bool:
    session = onnxruntime.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    return "CUDAExecutionProvider" in session.get_providers()


def test_cuda_and_tensorrt_sessions_are_refused_when_they_would_run_on_cpu(bundle_dir):
    bundle = load_bundle(bundle_dir)
    if _cuda_really_works(bundle_dir / "model.onnx"):
        pytest.skip("this machine has a working CUDA provider")
    for name in ("ort-cuda", "ort-trt"):
        with pytest.raises(RobustDeployError, match=f"runtime '{name}' is not available") as refused:
            create_runtime(bundle, name)
        assert "failed to load: Failed to" in str(refused.value)  # onnxruntime's own reason, not a guess
        assert "\n" not in str(refused.value)


def test_missing_provider_in_build_is_named(bundle_dir, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RobustDeployError, match="needs CUDAExecutionProvider, which this onnxruntime build lacks"):
        open_session(bundle_dir / "model.onnx", "ort-cuda")


def test_runtime_specs_and_capabilities(bundle_dir, digits):
    bundle = load_bundle(bundle_dir)
    ref, ort = create_runtime(bundle, "torch"), create_runtime(bundle, "ort-cpu")
    assert ref.capability == Capability.GRADIENTS and ort.capability == Capability.SCORES
    assert ort.describe()["providers"] == ["CPUExecutionProvider"]
    x = digits.test.x[:10]
    assert torch.equal(ort.predict(x), ref.predict(x))
    assert ort.queries == 10
    with pytest.raises(RobustDeployError, match="did you mean 'ort-cpu'"):
        create_runtime(bundle, "ort-cpy")
    with pytest.raises(RobustDeployError, match="no 'int8' variant"):
        create_runtime(bundle, "ort-cpu:int8")
    with pytest.raises(RobustDeployError, match="only the fp32 graph"):
        create_runtime(bundle, "torch:fp16")


def test_gpu_providers_compute_in_fp32_with_fixed_algorithms_and_a_cached_trt_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTDEPLOY_TRT_CACHE", str(tmp_path))
    (cuda, options), cpu = provider_options("ort-cuda", 1, "pixels", (1, 8, 8), 64)
    assert cuda == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options == {"device_id": "1", "use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
    (trt, options), _, _ = provider_options("ort-trt", 0, "pixels", (1, 8, 8), 64)
    assert trt == "TensorrtExecutionProvider"
    assert options["trt_profile_min_shapes"] == "pixels:1x1x8x8"
    assert options["trt_profile_max_shapes"] == "pixels:64x1x8x8"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    assert provider_options("ort-cpu", 0, "pixels", None, 64) == ["CPUExecutionProvider"]


def test_node_placement_is_recorded_and_a_gpu_run_on_the_cpu_is_refused(bundle_dir, caplog):
    described = create_runtime(load_bundle(bundle_dir), "ort-cpu").describe()
    assert described["provider_options"] == {"CPUExecutionProvider": {}}
    assert list(described["node_placement"]) == ["CPUExecutionProvider"]
    assert described["node_placement"]["CPUExecutionProvider"] > 5
    split = {"CUDAExecutionProvider": ["node_conv (Conv)"], "CPUExecutionProvider": ["node_shape (Shape)"]}
    assert check_placement("ort-cuda", split) == ["node_shape (Shape)"]
    assert "runs 1 of 2 nodes on the CPU" in caplog.text
    with pytest.raises(RobustDeployError, match="assigned it no node"):
        check_placement("ort-trt", {"CPUExecutionProvider": ["node_conv (Conv)"]})
    assert check_placement("ort-cuda", None) == []  # an onnxruntime that records no assignment


def test_gpu_memory_comes_from_nvml_for_this_process_on_the_runtime_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu_memory_mb(0) == (None, "unavailable: NVML bindings not installed (pip install nvidia-ml-py)")
    asked, me = [], os.getpid()
    process = types.SimpleNamespace
    processes = [process(pid=me + 1, usedGpuMemory=9), process(pid=me, usedGpuMemory=3 << 20)]
    fake = types.SimpleNamespace(NVMLError=RuntimeError, nvmlInit=lambda: None,
                                 nvmlDeviceGetHandleByIndex=lambda i: asked.append(i) or i,
                                 nvmlDeviceGetComputeRunningProcesses=lambda handle: processes)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert gpu_memory_mb(1) == (3.0, "NVML, this process on GPU 5") and asked == [5]


def test_bench_records_how_memory_was_measured_and_each_runtime(bundle_dir, tmp_path):
    result = bench(BenchConfig(bundle_dir, ("ort-cpu", "torch"), (4,), warmup=1, iterations=2, out=tmp_path / "b.json"))
    assert [r.memory_source for r in result.rows] == ["process peak RSS (VmHWM)"] * 2
    assert all(r.copy_ms is None for r in result.rows)  # nothing to copy on the CPU
    assert [r["runtime"] for r in result.runtimes] == ["ort-cpu", "torch"]
    assert "numerics" in result.runtimes[1] and load_bench(tmp_path / "b.json").runtimes == result.runtimes


def test_torchrun_ranks_wait_an_explicit_time(monkeypatch):
    assert shards.timeout().total_seconds() == 180 * 60
    monkeypatch.setenv("ROBUSTDEPLOY_DIST_TIMEOUT_MIN", "720")
    assert shards.timeout().total_seconds() == 720 * 60
    monkeypatch.setenv("ROBUSTDEPLOY_DIST_TIMEOUT_MIN", "soon")
    with pytest.raises(RobustDeployError, match="positive number of minutes"):
        shards.timeout()
