"""`diff --locate`: a node planted to diverge is located, in the library and through the CLI on a bundle whose
int8 variant is replaced by the planted graph."""

from __future__ import annotations

import json
import shutil
from functools import partial

import numpy as np
import onnx
from onnx import numpy_helper

from robustdeploy.bundle import load_bundle
from robustdeploy.evaluation.session import load_test_split
from robustdeploy.locate import Graphs, as_consumed, locate
from robustdeploy.runtimes.ort import open_session
from tests.conftest import cli, rehash

PLANTED = "net.3.weight"  # the second convolution's weights, negated: its node must be the first to depart


def planted(path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == PLANTED:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    return model


def graphs(reference: onnx.ModelProto, deployment: onnx.ModelProto) -> Graphs:
    opened = partial(open_session, runtime="ort-cpu")
    return Graphs(reference, deployment, opened, opened, lambda x, _s: x.numpy().astype(np.float32))


def test_planted_divergent_node_is_located(variant_bundle_dir):
    bundle = load_bundle(variant_bundle_dir)
    x = load_test_split(bundle, None, 4).load().x
    fp32 = onnx.load(str(bundle.variant_path("fp32")))
    found = locate(graphs(fp32, planted(bundle.variant_path("fp32"))), x, [0, 1, 2, 3])
    for loc in found:
        assert loc.first is not None and loc.first.module == "net.3" and loc.first.op == "Conv"
        assert loc.top[0].node == loc.first.node and loc.top[0].added > 0.1
    same = locate(graphs(fp32, onnx.load(str(bundle.variant_path("fp32")))), x, [0, 1, 2, 3])
    assert all(loc.first is None and loc.top[0].added < 1e-4 for loc in same)


def test_int8_tensors_are_compared_as_their_consumers_read_them(variant_bundle_dir):
    int8 = onnx.load(str(load_bundle(variant_bundle_dir).variant_path("int8")))
    alias = as_consumed(int8)
    assert alias["relu"] == "relu_DequantizeLinear_Output"


def test_diff_locate_reports_the_planted_node(variant_bundle_dir, tmp_path):
    bundle = shutil.copytree(variant_bundle_dir, tmp_path / "bundle")
    onnx.save(planted(bundle / "model.onnx"), str(bundle / "model.int8.onnx"))
    rehash(bundle, "model.int8.onnx")
    proc = cli("diff", bundle, "--locate", "--limit", "30", "--eps", "0.01", "--search", "genetic", "--budget", "2",
               "--out", tmp_path / "d.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "first departs at node_conv2d_1 (Conv, net.3)" in proc.stdout
    located = json.loads((tmp_path / "d.json").read_text())["extra"]["locate"]["located"]["ort-cpu:int8/eps=0.01"]
    assert located and all(loc["first"]["module"] == "net.3" for loc in located)
    page = cli("report", tmp_path / "d.json", "--html", tmp_path / "r.html", cwd=tmp_path)
    assert page.returncode == 0, page.stderr
    html = (tmp_path / "r.html").read_text()
    assert "first departing node" in html and "node_conv2d_1 (Conv, net.3)" in html
