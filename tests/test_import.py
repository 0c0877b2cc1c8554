"""Bring your own model: a timm model with the test's weights, ONNX files exported here with torch.onnx.export,
a graph onnx2torch cannot convert (score-only), transfer from a surrogate, and every bad input as one line."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.models import Classifier
from robustdeploy.preprocess import Preprocessing
from robustdeploy.runtimes import create_runtime
from robustdeploy.train import load_run

CLASSES = ("cat", "dog", "fish")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Three classes of JPEG/PNG images of assorted sizes, some grey, some colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(6):
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            image = Image.fromarray((rng.random((h, w, 3)) * 80 + 60 * c).astype(np.uint8))
            (image.convert("L") if i % 3 == 0 else image).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def export(model: torch.nn.Module, path: Path, dynamo: bool, dynamic: dict | None = None, inputs: int = 1,
           shape: tuple[int, ...] = (1, 8, 8)) -> Path:
    """torch.onnx.export, as a user's pipeline would call it (not robustdeploy's exporter)."""
    example = tuple(torch.rand(2, *shape) for _ in range(inputs))
    names = [f"in{i}" for i in range(inputs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model.eval(), example, dynamo=True, input_names=names, verbose=False,
                              dynamic_shapes=tuple({0: torch.export.Dim("n", min=1)} for _ in names)).save(str(path))
        else:
            torch.onnx.export(model.eval(), example, str(path), dynamo=False, input_names=names,
                              dynamic_axes=dynamic if dynamic is not None else {n: {0: "n"} for n in names})
    return path


@pytest.fixture(scope="session")
def onnx_files(run_dir, tmp_path_factory) -> dict[str, Path]:
    """The digits CNN exported by the test: with the dynamo exporter (pixels in), as its bare net (normalised input),
    with a Shrink node onnx2torch cannot convert, and the bad files."""
    import onnx
    from onnx import TensorProto, helper

    model, _ = load_run(run_dir)
    root = tmp_path_factory.mktemp("onnx")
    files = {"dynamo": export(model, root / "dynamo.onnx", dynamo=True),
             "normalised": export(model.net, root / "normalised.onnx", dynamo=False)}
    shrink = onnx.load(str(files["normalised"]))
    out = shrink.graph.output[0].name
    shrink.graph.node[-1].output[0] = "pre_shrink"
    shrink.graph.node.append(helper.make_node("Shrink", ["pre_shrink"], [out], lambd=0.0))
    onnx.save(shrink, str(root / "shrink.onnx"))
    files["shrink"] = root / "shrink.onnx"

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, a, b):
            return self.m(a) + self.m(b)

    files["two-inputs"] = export(Two(), root / "two.onnx", dynamo=False, inputs=2)
    files["flat-input"] = export(torch.nn.Linear(64, 10), root / "flat.onnx", dynamo=False, shape=(64,))
    files["dynamic-spatial"] = export(model, root / "spatial.onnx", dynamo=False,
                                      dynamic={"in0": {0: "n", 2: "h", 3: "w"}})
    files["seven-scores"] = export(torch.nn.Sequential(model, torch.nn.Linear(10, 7)), root / "seven.onnx", False)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [64, 10], [0.01] * 640)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT), helper.make_node("Flatten", ["f"], ["v"]),
         helper.make_node("MatMul", ["v", "W"], ["out"])], "uint8-input",
        [helper.make_tensor_value_info("img", TensorProto.UINT8, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 10])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(root / "uint8.onnx"))
    files["uint8-input"] = root / "uint8.onnx"
    return files


def main(monkeypatch, capsys, *args: object) -> tuple[int, str]:
    """The CLI entry point in this process: exit code and stderr."""
    from robustdeploy.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["robustdeploy", "-q", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture(scope="session")
def onnx_bundle(onnx_files, tmp_path_factory) -> Path:
    """The dynamo-exported digits CNN imported alone: gradients from onnx2torch."""
    from robustdeploy.importer import ImportConfig, import_onnx

    out = tmp_path_factory.mktemp("export") / "onnx-alone"
    data = DataConfig(preprocessing=Preprocessing((1, 8, 8)))
    import_onnx(ImportConfig(out=out, data=data), onnx_files["dynamo"])
    return out


@pytest.fixture(scope="session")
def score_only_bundle(onnx_files, run_dir, tmp_path_factory) -> Path:
    from robustdeploy.importer import ImportConfig, import_onnx

    _, record = load_run(run_dir)
    out = tmp_path_factory.mktemp("export") / "score-only"
    pre = Preprocessing((1, 8, 8), record.spec.mean, record.spec.std, normalisation="outside")
    import_onnx(ImportConfig(out=out, data=DataConfig(preprocessing=pre)), onnx_files["shrink"])
    return out


def test_image_folders_of_any_size_load_through_the_preprocessing(image_folder):
    colour = load_dataset(DataConfig("imagefolder", str(image_folder), preprocessing=Preprocessing((3, 24, 20))))
    assert colour.input_shape == (3, 24, 20) and colour.classes == CLASSES
    grey = load_dataset(DataConfig("imagefolder", str(image_folder), preprocessing=Preprocessing((1, 16, 16))))
    assert grey.input_shape == (1, 16, 16)
    bgr = load_dataset(DataConfig("imagefolder", str(image_folder),
                                  preprocessing=Preprocessing((3, 24, 20), channel_order="BGR")))
    assert torch.equal(bgr.train.x, colour.train.x.flip(1))


def test_timm_import_matches_the_model_it_came_from(image_folder, tmp_path, monkeypatch, capsys):
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    save_file(net.state_dict(), str(tmp_path / "weights.safetensors"))
    out = tmp_path / "bundle"
    code, err = main(monkeypatch, capsys, "import", "torch", "--arch", "timm:test_resnet", "--weights",
                     tmp_path / "weights.safetensors", "--data-root", image_folder, "--input-size", 3, 32, 32,
                     "--mean", "imagenet", "--std", "imagenet", "--out", out)
    assert code == 0, err
    bundle = load_bundle(out)
    assert bundle.manifest["preprocessing"]["normalisation"] == "in-graph"
    assert bundle.preprocessing.mean == (0.485, 0.456, 0.406) and bundle.gradients == "spec"
    assert bundle.variants["fp32"]["parity"]["passed"]
    x = load_dataset(bundle.data).test.x
    original = Classifier(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    with torch.no_grad():
        expected = original(x)
        assert torch.allclose(bundle.reference_model()(x), expected, atol=1e-6)
    assert torch.allclose(create_runtime(bundle, "ort-cpu").logits(x), expected, atol=1e-4)


def test_onnx_alone_is_converted_and_pgd_lowers_its_accuracy_on_ort(onnx_bundle, tmp_path):
    bundle = load_bundle(onnx_bundle)
    assert bundle.gradients == "onnx2torch" and bundle.manifest["gradients"]["parity"]["passed"]
    assert bundle.manifest["source"]["kind"] == "onnx" and bundle.manifest["output"]["meaning"] == "logits"
    result = evaluate(EvalConfig(bundle=onnx_bundle, runtimes=("ort-cpu",), attacks=("pgd",), epsilons=(0.15,),
                                 limit=60, out=tmp_path / "pgd.json"))
    cell = result.cells[0]
    assert cell["runtime"] == "ort-cpu" and cell["clean_accuracy"] > 80
    assert cell["robust_accuracy"] < cell["clean_accuracy"] - 30


def test_onnx_expecting_normalised_input_is_wrapped_to_take_pixels(onnx_files, run_dir, tmp_path):
    from robustdeploy.importer import ImportConfig, import_onnx

    model, record = load_run(run_dir)
    pre = Preprocessing((1, 8, 8), record.spec.mean, record.spec.std, normalisation="outside")
    bundle = import_onnx(ImportConfig(out=tmp_path / "b", data=DataConfig(preprocessing=pre)),
                         onnx_files["normalised"])
    x = load_dataset(bundle.data).test.x[:50]
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(bundle.reference_model()(x), expected, atol=1e-4)
    assert torch.allclose(create_runtime(bundle, "ort-cpu").logits(x), expected, atol=1e-4)


def test_a_graph_the_converter_cannot_handle_is_score_only_and_square_runs(score_only_bundle, tmp_path):
    bundle = load_bundle(score_only_bundle)
    assert bundle.score_only and "Shrink" in bundle.manifest["gradients"]["reason"]
    with pytest.raises(RobustDeployError, match=r"score-only.*--attack square.*--surrogate"):
        evaluate(EvalConfig(bundle=score_only_bundle, runtimes=("ort-cpu",), limit=10, out=tmp_path / "p.json"))
    assert not (tmp_path / "p.json").exists()
    result = evaluate(EvalConfig(bundle=score_only_bundle, runtimes=("ort-cpu",), attacks=("square",),
                                 epsilons=(0.2,), attack_params={"max_queries": 100}, limit=20,
                                 out=tmp_path / "square.json"))
    cell = result.cells[0]
    assert result.sets[0]["source"] == "ort-cpu" and cell["robust_accuracy"] < cell["clean_accuracy"]


def test_surrogate_transfer_crafts_on_the_other_bundle_and_scores_here(score_only_bundle, bundle_dir, tmp_path):
    result = evaluate(EvalConfig(bundle=score_only_bundle, runtimes=("ort-cpu",), attacks=("pgd",), epsilons=(0.15,),
                                 limit=60, surrogate=bundle_dir, out=tmp_path / "transfer.json"))
    assert result.sets[0]["source"] == "surrogate:cnn-digits"
    assert result.extra["surrogate"]["bundle"] == str(bundle_dir)
    cell = result.cells[0]
    assert cell["robust_accuracy"] < cell["clean_accuracy"] - 10


def test_bundle_from_module_takes_any_module(tmp_path):
    import robustdeploy

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    bundle = robustdeploy.bundle_from_module(net, torch.rand(2, 1, 8, 8), preprocessing=Preprocessing((1, 8, 8)),
                                             out=tmp_path / "module", data=DataConfig())
    assert bundle.gradients == "onnx2torch" and bundle.classes == tuple(str(c) for c in range(10))
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(bundle.reference_model()(x), net(x), atol=1e-5)


@pytest.mark.parametrize("case, needle", [
    ("two-inputs", "has 2 inputs"),
    ("flat-input", "not an image batch"),
    ("uint8-input", "not float"),
    ("dynamic-spatial", "dynamic axes"),
    ("seven-scores", "not one score per class"),
    ("wrong-size", "set --input-size 1 8 8"),
])
def test_bad_onnx_files_are_one_line_and_write_nothing(case, needle, onnx_files, tmp_path, monkeypatch, capsys):
    file = onnx_files["dynamo" if case == "wrong-size" else case]
    size = (1, 16, 16) if case == "wrong-size" else (1, 8, 8)
    code, err = main(monkeypatch, capsys, "import", "onnx", file, "--dataset", "digits", "--input-size", *size,
                     "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("case, needle", [
    ("pickled", "pickled checkpoint"),
    ("other-arch", "missing"),
    ("wrong-classes", "has shape"),
])
def test_weights_that_do_not_fit_are_one_line(case, needle, image_folder, tmp_path, monkeypatch, capsys):
    import timm

    net = timm.create_model("test_resnet", pretrained=False, num_classes=5 if case == "wrong-classes" else 3)
    weights = tmp_path / "weights.pt"
    torch.save(net if case == "pickled" else net.state_dict(), weights)
    arch = "timm:test_vit" if case == "other-arch" else "timm:test_resnet"
    code, err = main(monkeypatch, capsys, "import", "torch", "--arch", arch, "--weights", weights, "--data-root",
                     image_folder, "--input-size", 3, 32, 32, "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_weights_shared_through_identity_nodes_still_convert(tmp_path):
    """TorchScript-exported graphs feed Conv biases through Identity(initializer); onnx2torch needs them direct."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from robustdeploy.convert import convert_onnx
    from robustdeploy.runtimes.base import RuntimeSpec
    from robustdeploy.runtimes.ort import OrtRuntime

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["b"], ["b_shared"]), helper.make_node("Conv", ["x", "w", "b_shared"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["out"])],
        "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = torch.rand(4, 1, 8, 8)
    converted = convert_onnx(tmp_path / "m.onnx", Preprocessing((1, 8, 8)))
    expected = OrtRuntime(RuntimeSpec("ort-cpu"), tmp_path / "m.onnx").logits(x)
    assert torch.allclose(converted(x).detach(), expected, atol=1e-5)
