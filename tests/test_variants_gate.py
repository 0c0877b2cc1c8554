"""Precision variants, compare, bench and the CI gate on the digits CNN."""

import xml.etree.ElementTree as ET

import onnx
import pytest

from robustdeploy.bench import BenchConfig, bench, load_bench
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.compare import CompareConfig, compare
from robustdeploy.evaluation.plans.gate import CheckConfig, run_check
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.runtimes import create_runtime
from robustdeploy.variants import VariantConfig
from tests.conftest import assert_one_line_error, cli, rehash


def test_fp16_and_int8_variants_are_built_and_measured(variant_bundle_dir, digits):
    bundle = load_bundle(variant_bundle_dir)
    assert set(bundle.variants) == {"fp32", "fp16", "int8"}
    fp16 = onnx.load(str(bundle.variant_path("fp16")))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(bundle.variant_path("int8")))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    assert bundle.variants["int8"]["recipe"]["format"] == "QDQ"
    torch_pred = create_runtime(bundle, "torch").predict(digits.test.x)
    for variant in ("fp16", "int8"):
        parity = bundle.variants[variant]["parity"]
        pred = create_runtime(bundle, f"ort-cpu:{variant}").predict(digits.test.x)
        measured = 100.0 * (pred == torch_pred).float().mean().item()
        assert parity["agreement"] == pytest.approx(measured)  # the manifest records what really happens
        assert parity["max_abs"] > 0 and measured >= 95.0


def test_bad_variant_requests(run_dir, variant_bundle_dir, bundle_dir):
    with pytest.raises(RobustDeployError, match="unknown precision 'int4'"):
        VariantConfig(("fp32", "int4"))
    with pytest.raises(RobustDeployError, match="has no 'fp16' variant"):
        create_runtime(load_bundle(bundle_dir), "ort-cpu:fp16")
    assert_one_line_error(cli("bench", variant_bundle_dir, "-r", "torch:int8"), "only the fp32 graph")


def test_compare_rows_per_variant(variant_bundle_dir, tmp_path):
    out = tmp_path / "cmp.json"
    result = compare(CompareConfig(variant_bundle_dir, attacks=("fgsm",), epsilons=(0.1,), limit=80,
                                   latency_iterations=5, out=out))
    assert result.runtime_labels() == ["torch", "ort-cpu", "ort-cpu:fp16", "ort-cpu:int8"]
    assert result.extra["agreement_with_torch"]["torch"] == 100.0
    assert [len(runs) for runs in result.extra["latency_runs_ms"].values()] == [5] * 4  # for the report's figure
    torch_cell = result.cell("torch", 0.1, "fgsm")
    assert torch_cell["robust_accuracy"] < torch_cell["clean_accuracy"]
    assert rescore(out) == result.cells
    table = out.with_suffix(".md").read_text()
    assert "| ort-cpu:int8 |" in table and "threat model" in table
    assert "deployment-in-the-loop" in table.split("| ort-cpu:int8 |")[1].splitlines()[0]  # every runtime is looped
    windowed = compare(CompareConfig(variant_bundle_dir, attacks=("fgsm",), epsilons=(0.1,), limit=80, batch_size=32,
                                     window=32, latency_iterations=5, out=tmp_path / "w.json"))  # 3 windows
    assert windowed.cells == result.cells and windowed.extra["agreement_with_torch"] == \
        result.extra["agreement_with_torch"] and not (tmp_path / "w.shards").exists()


def test_bench_reports_ordered_percentiles(variant_bundle_dir, tmp_path):
    result = bench(BenchConfig(variant_bundle_dir, ("ort-cpu", "ort-cpu:int8"), (1, 8), warmup=2, iterations=15,
                               out=tmp_path / "bench.json"))
    assert len(result.rows) == 4
    for row in result.rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms and row.throughput > 0
        assert row.providers == ["CPUExecutionProvider"]
        assert len(row.samples_ms) == 15 and min(row.samples_ms) <= row.p50_ms <= max(row.samples_ms)
    assert result.session_options["graph_optimization"] == "all"
    assert load_bench(tmp_path / "bench.json") == result  # every timed run kept, read back through its schema


def test_check_gate_verdicts_and_files(variant_bundle_dir, tmp_path):
    result, found = run_check(CheckConfig(variant_bundle_dir, runtimes=("ort-cpu",), limit=100, out=tmp_path / "c.json",
                                          markdown=tmp_path / "s.md", junit=tmp_path / "j.xml"))
    assert result.extra["passed"] and {i.check for i in found} >= {"clean accuracy drop", "top-1 agreement",
                                                                     "robust accuracy drop eps=0.05"}
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.tag == "testsuite" and int(suite.get("tests")) == len(found) and suite.get("failures") == "0"
    assert "all checks passed" in (tmp_path / "s.md").read_text()
    assert [c["attack"] for c in result.cells if c["runtime"] == "ort-cpu"] == ["fgsm", "pgd"]  # worst case last
    assert rescore(tmp_path / "c.json") == result.cells
    differ = next(i for i in found if i.check == "disagreement eps=0.01")
    assert differ.passed and differ.measured == 0.0 and "2 queries per sample" in differ.detail
    assert rescore(tmp_path / "c.diff.json")[0]["disagreement"] == 0.0


def test_check_cli_exit_codes_follow_measured_drop(bundle_copy, tmp_path):
    """A deployment that really departs (final bias shifted, as a broken export would) fails a tight gate."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(str(bundle_copy / "model.onnx"))
    bias = next(t for t in reversed(model.graph.initializer) if list(t.dims) == [10])
    shifted = numpy_helper.to_array(bias).copy()
    shifted[0] += 6.0
    bias.CopyFrom(numpy_helper.from_array(shifted.astype(np.float32), bias.name))
    onnx.save(model, str(bundle_copy / "model.onnx"))
    rehash(bundle_copy, "model.onnx")
    _, found = run_check(CheckConfig(bundle_copy, runtimes=("ort-cpu",), limit=100, out=tmp_path / "c.json"))
    agreement = next(i.measured for i in found if i.check == "top-1 agreement")
    assert 0.0 < agreement < 100.0
    common = ["check", bundle_copy, "--limit", "100", "--max-accuracy-drop", "100", "--max-robust-drop", "100",
              "--max-disagreement", "100",
              "--markdown", tmp_path / "s.md", "--junit", tmp_path / "j.xml", "--out", tmp_path / "c.json"]
    tight = cli(*common, "--min-agreement", f"{agreement + 0.1:.2f}")
    assert tight.returncode == 1 and "FAILED ort-cpu top-1 agreement" in tight.stdout
    assert tight.stderr.strip().splitlines()[-1] == "error: 1 of 4 checks failed (see above)"
    assert "fgsm/torch/eps=0.05: " in tight.stderr  # progress lines on stderr, one per crafted set
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert "some checks failed" in (tmp_path / "s.md").read_text()
    loose = cli(*common, "--min-agreement", f"{agreement - 0.1:.2f}")
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert_one_line_error(cli("check", bundle_copy, "--min-agreement", "120"), "percentage")
    assert_one_line_error(cli("check", bundle_copy, "--diff-budget", "0"), "query budget must be at least 1")


def test_compare_runs_a_blackbox_attack_on_each_variant_itself(variant_bundle_dir, tmp_path):
    result = compare(CompareConfig(variant_bundle_dir, runtimes=("ort-cpu", "ort-cpu:int8"), attacks=("square",),
                                   epsilons=(0.15,), attack_params={"max_queries": 300}, limit=40,
                                   latency_iterations=3, out=tmp_path / "c.json"))
    assert {s["source"] for s in result.sets} == {"ort-cpu", "ort-cpu:int8"}
    for runtime in ("ort-cpu", "ort-cpu:int8"):
        cell = result.cell(runtime, 0.15)
        assert cell["robust_accuracy"] < cell["clean_accuracy"] - 20
