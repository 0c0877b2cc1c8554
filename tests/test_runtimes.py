import pytest
import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.runtimes import Capability, create_runtime
from robustdeploy.runtimes.ort import open_session

onnxruntime = pytest.importorskip("onnxruntime")


def _cuda_really_works(path) -> bool:
    session = onnxruntime.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    return "CUDAExecutionProvider" in session.get_providers()


def test_cuda_and_tensorrt_sessions_are_refused_when_they_would_run_on_cpu(bundle_dir):
    bundle = load_bundle(bundle_dir)
    if _cuda_really_works(bundle_dir / "model.onnx"):
        pytest.skip("this machine has a working CUDA provider")
    for name in ("ort-cuda", "ort-trt"):
        with pytest.raises(RobustDeployError, match=f"runtime '{name}' is not available"):
            create_runtime(bundle, name)


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
