
import json
import re

import onnx
import pytest
import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.errors import CheckFailed, RobustDeployError
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.parity import ParityTolerance
from robustdeploy.runtimes import create_runtime
from tests.conftest import rehash


def test_bundle_has_manifest_and_passes_parity(bundle_dir):
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert m["input"]["shape"] == [None, 1, 8, 8] and m["input"]["dtype"] == "float32"
    assert set(m["files"]) == {"model.onnx", "reference.safetensors"}
    assert {"torch", "onnx", "onnxruntime"} <= set(m["versions"])
    parity = m["variants"]["fp32"]["parity"]
    assert parity["passed"] and parity["agreement"] == 100.0 and parity["max_abs"] < 1e-4
    assert parity["samples"] == m["data"]["samples"] > 0
    onnx.checker.check_model(str(bundle_dir / "model.onnx"))


def test_onnx_graph_matches_pytorch_at_any_batch_size(bundle_dir, digits):
    bundle = load_bundle(bundle_dir)
    ort, ref = create_runtime(bundle, "ort-cpu"), create_runtime(bundle, "torch")
    for n in (1, 7, 64):
        x = digits.test.x[:n]
        assert torch.allclose(ort.logits(x), ref.logits(x), atol=1e-4)


def test_torchscript_exporter_also_matches(run_dir, tmp_path):
    bundle, parity = export_bundle(ExportConfig(run_dir=run_dir, out=tmp_path / "ts", exporter="torchscript"))
    assert parity.passed and bundle.manifest["exporter"] == "torchscript"


def test_parity_tolerance_breach_fails_export_and_leaves_nothing(run_dir, tmp_path):
    tight = ParityTolerance(atol=0.0, rtol=0.0, min_agreement=100.0)
    with pytest.raises(CheckFailed, match="parity check failed"):
        export_bundle(ExportConfig(run_dir=run_dir, out=tmp_path / "b", tolerance=tight))
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force(run_dir, bundle_dir):
    with pytest.raises(RobustDeployError, match="--force"):
        export_bundle(ExportConfig(run_dir=run_dir, out=bundle_dir))


def test_tampered_file_is_refused(bundle_copy):
    with open(bundle_copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(RobustDeployError, match="SHA-256"):
        load_bundle(bundle_copy)


def test_corrupt_onnx_is_refused_even_with_matching_hash(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    rehash(bundle_copy, "model.onnx")
    with pytest.raises(RobustDeployError, match="not a valid ONNX file"):
        load_bundle(bundle_copy)


def test_external_data_outside_the_bundle_is_refused(bundle_copy, tmp_path):
    model = onnx.load(str(bundle_copy / "model.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    tensor.external_data.add(key="location", value="../../etc/passwd")
    tensor.ClearField("raw_data")
    onnx.save(model, str(bundle_copy / "model.onnx"))
    rehash(bundle_copy, "model.onnx")
    with pytest.raises(RobustDeployError, match="outside its folder"):
        load_bundle(bundle_copy)


def test_symlinked_file_is_refused(bundle_copy, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    (bundle_copy / "model.onnx").rename(target)
    (bundle_copy / "model.onnx").symlink_to(target)
    with pytest.raises(RobustDeployError, match="symlink"):
        load_bundle(bundle_copy)


def test_missing_or_corrupt_manifest(bundle_copy, tmp_path):
    with pytest.raises(RobustDeployError, match="not found"):
        load_bundle(tmp_path / "nothing")
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(RobustDeployError, match="corrupt"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change,needle", [
    (lambda m: m["input"].update(shape=[None, 1, 100000, 100000]), "refusing it"),
    (lambda m: m["input"].update(shape=[None, 1, 8]), "input.shape has 3 items, expected 4"),
    (lambda m: m["input"].update(shape=[None, 1, None, 8]), "expected (channels, height, width)"),
    (lambda m: m["input"].update(shape=[None, 1, 9, 9]), "disagrees"),
    (lambda m: m.update(classes=["a", "b"]), "names 2 classes for a model with 10 outputs"),
    (lambda m: m.update(classes="abc"), 'classes is "abc", expected array'),
])
def test_manifest_that_disagrees_with_itself_is_refused_before_anything_runs(bundle_copy, change, needle):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    change(manifest)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RobustDeployError, match=re.escape(needle)):
        load_bundle(bundle_copy)


def test_onnx_graph_that_disagrees_with_the_manifest_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["input"]["shape"], manifest["model"]["input_shape"] = [None, 1, 9, 9], [1, 9, 9]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RobustDeployError, match=r"model.onnx takes inputs of shape \[1, 8, 8\]"):
        load_bundle(bundle_copy)
