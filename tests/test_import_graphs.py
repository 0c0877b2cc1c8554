"""Users' real ONNX files (issue 22): graphs laid out like the ONNX Model Zoo's MNIST CNN, built here by hand with
weights trained for a second on scikit-learn digits: a hard-coded batch of 1, `auto_pad=SAME_UPPER`, an opset older
than ONNX Runtime runs, weights in an external-data file, and a 20-class model scored on a 3-class image folder.
Each imports and agrees 100 % between its PyTorch twin and ort-cpu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.importer import ImportConfig, import_onnx
from robustdeploy.preprocess import Preprocessing
from robustdeploy.runtimes import create_runtime

DIGITS = Preprocessing((1, 8, 8))


@pytest.fixture(scope="session")
def weights() -> dict[str, np.ndarray]:
    """A conv (3x3, 8 channels) - ReLU - 2x2 max-pool - linear net with 20 outputs, trained briefly on digits
    (labels 0-9; outputs 10-19 never the answer)."""
    torch.manual_seed(0)
    train = load_dataset(DataConfig()).train
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 20))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(2):
        for i in range(0, len(train), 64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(train.x[i : i + 64]), train.y[i : i + 64]).backward()
            optimiser.step()
    conv, linear = net[0], net[4]
    return {"w": conv.weight.detach().numpy(), "b": conv.bias.detach().numpy(),
            "fc": linear.weight.detach().numpy().T.copy(), "fc_b": linear.bias.detach().numpy()}


def zoo_graph(weights: dict, path: Path, *, batch: int | str = "n", auto_pad: str = "NOTSET", opset: int = 17,
              classes: int = 10, external: bool = False, flat: int = 128, constants: bool = False) -> Path:
    """The layout of the Model Zoo's MNIST CNN: Conv - Relu - MaxPool - Reshape([batch, -1]) - MatMul - Add (opset
    6 and older: Flatten - Gemm, as Add had no numpy broadcasting then); with `constants` the weights are Constant
    nodes, as the zoo file's CNTK export has them, instead of initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tensors = {"w": weights["w"], "b": weights["b"], "fc": weights["fc"][:, :classes],
               "fc_b": weights["fc_b"][:classes]}
    init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()]
    conv = {"pads": [1, 1, 1, 1]} if auto_pad == "NOTSET" else {"auto_pad": auto_pad}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], **conv),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    if opset < 7:
        nodes += [helper.make_node("Flatten", ["p"], ["v"]),
                  helper.make_node("Gemm", ["v", "fc", "fc_b"], ["out"], broadcast=1)]
    else:
        init.append(numpy_helper.from_array(np.array([batch if isinstance(batch, int) else -1, flat], np.int64),
                                            "shape"))
        nodes += [helper.make_node("Reshape", ["p", "shape"], ["v"]), helper.make_node("MatMul", ["v", "fc"], ["m"]),
                  helper.make_node("Add", ["m", "fc_b"], ["out"])]
    if constants:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in init] + nodes
        init = []
    graph = helper.make_graph(nodes, "zoo-style", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [batch, 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, classes])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.stem}.weights", size_threshold=64)
    else:
        onnx.save(model, str(path))
    return path


def agreement(bundle_dir: Path, n: int = 120) -> tuple[float, float]:
    """(top-1 agreement % between the PyTorch twin and ort-cpu, ort-cpu accuracy %) on the first `n` test images."""
    bundle = load_bundle(bundle_dir)
    test = load_dataset(bundle.data).test.head(n)
    with torch.no_grad():
        twin = bundle.reference_model()(test.x).argmax(1)
    ort = create_runtime(bundle, "ort-cpu").predict(test.x)
    return 100.0 * float((twin == ort).float().mean()), 100.0 * float((ort == test.y).float().mean())


@pytest.mark.parametrize("case", ["batch-1", "batch-1-sliced", "same-upper", "old-opset", "external-data",
                                  "constant-nodes"])
def test_zoo_style_graphs_import_with_gradients_and_agree(case, weights, tmp_path):
    options = {"batch-1": {"batch": 1}, "batch-1-sliced": {"batch": 1, "flat": -1},  # [1, -1]: no free batch
               "same-upper": {"auto_pad": "SAME_UPPER", "batch": 1},
               "old-opset": {"opset": 6, "batch": 1}, "external-data": {"external": True},
               "constant-nodes": {"constants": True, "auto_pad": "SAME_UPPER", "batch": 1}}[case]
    (tmp_path / "model").mkdir()
    file = zoo_graph(weights, tmp_path / "model" / "m.onnx", **options)
    bundle = import_onnx(ImportConfig(out=tmp_path / "b", data=DataConfig(preprocessing=DIGITS), parity_limit=60),
                         file)
    assert bundle.gradients == "onnx2torch", bundle.manifest["gradients"]
    agree, accuracy = agreement(bundle.path, 60)
    assert agree == 100.0 and accuracy > 80, (agree, accuracy)
    rewrites = [r["rewrite"] for r in bundle.manifest["gradients"]["rewrites"] + bundle.manifest["source"]["rewrites"]]
    if case in ("batch-1", "same-upper"):
        assert bundle.graph_batch == 1 and bundle.manifest["gradients"]["twin_batch"] is None and "batch" in rewrites
        assert ("auto_pad" in rewrites) == (case == "same-upper")
    if case == "batch-1-sliced":  # the free-batch twin fails at other batch sizes: it runs the batch of 1 in slices
        assert bundle.graph_batch == 1 and bundle.manifest["gradients"]["twin_batch"] == 1 and "batch" not in rewrites
    if case.startswith("batch-1") or case == "same-upper":
        twin = bundle.reference_model()
        x = load_dataset(bundle.data).test.x[:5].requires_grad_()
        twin(x).sum().backward()  # the twin takes any number of samples and gives gradients
        assert x.grad.abs().sum() > 0
    if case == "old-opset":
        assert "opset" in rewrites and bundle.manifest["opset"] >= 7 and bundle.manifest["source"]["opset"] == 6
    if case == "constant-nodes":
        assert {"constants", "auto_pad", "batch"} <= set(rewrites)
    if case == "external-data":
        assert "m.weights" in bundle.manifest["files"] and (bundle.path / "m.weights").is_file()


def test_fixed_batch_pgd_matches_between_torch_and_ort(weights, tmp_path):
    file = zoo_graph(weights, tmp_path / "m.onnx", batch=1, auto_pad="SAME_UPPER")
    bundle = import_onnx(ImportConfig(out=tmp_path / "b", data=DataConfig(preprocessing=DIGITS)), file)
    result = evaluate(EvalConfig(bundle=bundle.path, runtimes=("torch", "ort-cpu"), attacks=("pgd",),
                                 epsilons=(0.15,), attack_params={"steps": 10}, limit=24,
                                 out=tmp_path / "pgd.json"))
    cells = {c["runtime"]: c for c in result.cells}
    assert cells["torch"]["robust_accuracy"] == cells["ort-cpu"]["robust_accuracy"]
    assert cells["ort-cpu"]["robust_accuracy"] < cells["ort-cpu"]["clean_accuracy"] - 30


def test_external_data_outside_the_model_folder_is_refused(weights, tmp_path):
    import onnx

    file = zoo_graph(weights, tmp_path / "m.onnx", external=True)
    model = onnx.load(str(file), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../m.weights"
    (tmp_path / "sub").mkdir()
    onnx.save(model, str(tmp_path / "sub" / "m.onnx"))
    with pytest.raises(RobustDeployError, match="outside its folder"):
        import_onnx(ImportConfig(out=tmp_path / "b", data=DataConfig(preprocessing=DIGITS)),
                    tmp_path / "sub" / "m.onnx")
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="session")
def digit_folders(tmp_path_factory) -> Path:
    """Digits 1, 3 and 7 of scikit-learn's set as 8x8 PNGs in class folders named like a 20-class model's."""
    from PIL import Image

    root = tmp_path_factory.mktemp("subset")
    pool = load_dataset(DataConfig()).train
    for digit in (1, 3, 7):
        (root / f"d{digit}").mkdir()
        for i, x in enumerate(pool.x[pool.y == digit][:40]):
            Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(root / f"d{digit}" / f"{i}.png")
    return root


def test_a_20_class_model_scores_a_3_class_folder_by_name_and_by_map(weights, digit_folders, tmp_path, monkeypatch,
                                                                     capsys):
    import json
    import shutil
    import sys

    from robustdeploy.cli import main

    file = zoo_graph(weights, tmp_path / "m.onnx", classes=20)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"d{c}" for c in range(20)))
    data = DataConfig("imagefolder", str(digit_folders), preprocessing=DIGITS)
    by_name = import_onnx(ImportConfig(out=tmp_path / "by-name", data=data, classes_file=names), file)
    assert len(by_name.classes) == 20 and by_name.manifest["output"]["shape"] == [None, 20]
    agree, accuracy = agreement(by_name.path)
    assert agree == 100.0 and accuracy > 80, (agree, accuracy)  # argmax over all 20 outputs, labels 1, 3, 7

    renamed = tmp_path / "renamed"  # other folder names, one of them empty, mapped by a file
    for old, new in (("d1", "one"), ("d3", "three"), ("d7", "seven")):
        shutil.copytree(digit_folders / old, renamed / new)
    (renamed / "nine").mkdir()
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"one": "d1", "three": "d3", "seven": "d7", "nine": "d9"}))
    monkeypatch.setattr(sys, "argv", ["robustdeploy", "-q", "import", "onnx", str(file), "--input-size", "1", "8", "8",
                                      "--data-root", str(renamed), "--classes", str(names), "--class-map",
                                      str(mapping), "--out", str(tmp_path / "mapped")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    mapped = load_bundle(tmp_path / "mapped")
    assert mapped.data.class_map["one"] == "d1"
    assert sorted(set(load_dataset(mapped.data).test.y.tolist())) <= [1, 3, 7]
    agree, accuracy = agreement(mapped.path)
    assert agree == 100.0 and accuracy > 80, (agree, accuracy)

    mapping.write_text(json.dumps({"one": "d1"}))  # three and seven are not model classes: one line, the fix named
    with pytest.raises(RobustDeployError, match="'nine' is not among the model's 20 classes.*--class-map"):
        import_onnx(ImportConfig(out=tmp_path / "bad", data=DataConfig("imagefolder", str(renamed),
                                                                       preprocessing=DIGITS),
                                 classes_file=names, class_map=mapping), file)


def shared(relative: str) -> Path | None:
    """A file in `shared/` beside the checkout (or beside its worktree folder)."""
    root = Path(__file__).resolve().parents[1]
    return next((p / "shared" / relative for p in root.parents[:2] if (p / "shared" / relative).is_file()), None)


def test_the_model_zoo_mnist_file_imports_without_hand_edits(tmp_path):
    """The ONNX Model Zoo's MNIST CNN as first committed (opset 1, batch 1, SAME_UPPER, Constant-node weights,
    pixels in [0, 1]): upgraded, converted with gradients, and agreeing 100 % with ort-cpu on real MNIST. Model files
    stay out of the repository: the file is read from shared/models/ (benchmarks/zoo.py says where it comes from)."""
    labels, file = shared("data/mnist/t10k-labels-idx1-ubyte.gz"), shared("models/onnx-models-mnist-2018.onnx")
    if labels is None or file is None:
        pytest.skip("needs ../shared/data/mnist and ../shared/models/onnx-models-mnist-2018.onnx")
    data_root = labels.parent
    bundle = import_onnx(ImportConfig(out=tmp_path / "zoo", parity_limit=100, data=DataConfig(
        "mnist", str(data_root), preprocessing=Preprocessing((1, 28, 28)))), file)
    assert bundle.gradients == "onnx2torch" and bundle.graph_batch == 1
    assert bundle.manifest["source"]["opset"] == 1 and bundle.manifest["opset"] == 13
    assert {r["rewrite"] for r in bundle.manifest["gradients"]["rewrites"]} == {"constants", "auto_pad", "batch"}
    agree, accuracy = agreement(bundle.path, 100)
    assert agree == 100.0 and accuracy > 95, (agree, accuracy)


def test_a_fixed_batch_of_2_gets_fp16_and_int8_variants_fed_in_pairs(weights, tmp_path):
    from robustdeploy.variants import VariantConfig

    file = zoo_graph(weights, tmp_path / "m.onnx", batch=2)
    bundle = import_onnx(ImportConfig(out=tmp_path / "b", data=DataConfig(preprocessing=DIGITS),
                                      variants=VariantConfig(precisions=("fp32", "fp16", "int8"))), file)
    assert bundle.graph_batch == 2 and all(v["parity"]["passed"] for v in bundle.variants.values())
    x = load_dataset(bundle.data).test.x[:7]  # an odd count: the last pair is padded, its padding dropped
    fp32 = create_runtime(bundle, "ort-cpu").logits(x)
    assert fp32.shape == (7, 10) and torch.equal(create_runtime(bundle, "ort-cpu").logits(x[6:]), fp32[6:])
    assert create_runtime(bundle, "ort-cpu:int8").logits(x).shape == (7, 10)
