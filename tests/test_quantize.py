"""`quantize`: int8 candidates measured by the evaluate plan, the chosen one written into the bundle; a bound no
candidate can meet is reported as such and nothing is written."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans import quantize as plan
from robustdeploy.evaluation.plans.quantize import QuantizeConfig, quantize
from tests.conftest import cli


@pytest.fixture()
def copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


def test_chosen_variant_is_written_with_its_measurements(copy, tmp_path):
    proc = cli("quantize", copy, "--limit", "40", "--eps", "0.1", "--steps", "5", "--max-robust-drop", "1",
               "--out", tmp_path / "q.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "int8-robust:" in proc.stdout and "latency p50" in proc.stdout
    variant = load_bundle(copy).variants["int8-robust"]  # hashed in the manifest, verified on load
    measured = variant["recipe"]["measured"]
    assert variant["precision"] == "int8" and measured["robust_drop"] <= 1 and measured["agreement_drop"] <= 0.5
    graph = onnx.load(str(copy / variant["file"])).graph
    quantised = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm")} & \
        {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    kept = set(variant["recipe"]["nodes_to_exclude"])
    assert len(quantised) == 4 - len(kept)  # every node not kept fp32 reads int8 weights
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["written"] == "int8-robust" and set(report["sensitivity"]) == set(report["nodes"])


def test_unmeetable_bound_is_reported_and_nothing_written(copy, tmp_path, monkeypatch):
    real = plan.make_int8

    def miscalibrated(src, dst, calibration, *args):  # activations clipped at 1% of their range
        real(src, dst, calibration * 0.01, *args)

    monkeypatch.setattr(plan, "make_int8", miscalibrated)
    report = quantize(QuantizeConfig(bundle=copy, limit=40, eps=0.1, attack_params={"steps": 5}, max_robust_drop=0,
                                     max_agreement_drop=0, max_fp32_nodes=1, out=tmp_path / "q.json"))
    assert report.chosen is None and report.written is None
    assert all(not c.meets for c in report.candidates) and len(report.candidates) == 5  # all-int8 + 4 singles
    assert "no int8 candidate meets the bound" in report.line()
    assert "int8-robust" not in load_bundle(copy).variants


def test_bad_options_are_refused(copy):
    with pytest.raises(RobustDeployError, match="max-robust-drop"):
        QuantizeConfig(bundle=copy, max_robust_drop=-1)
    with pytest.raises(RobustDeployError, match="new name"):
        QuantizeConfig(bundle=copy, variant="int8")
