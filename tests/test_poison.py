"""Training-data poisoning (seed 000) on the built-in digits: bounds, objectives, victims on torch and ort-cpu."""

from __future__ import annotations

import json

import pytest
import torch

from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.poisoning import PoisonEvalConfig, evaluate_poison, poison_table
from robustdeploy.poison.generate import GenerateConfig, generate, train_generator
from robustdeploy.poison.generator import UNetGenerator
from robustdeploy.poison.store import load_poison_set
from robustdeploy.poison.surrogates import prepare
from robustdeploy.poison.targeted import CraftConfig, craft
from tests.conftest import assert_one_line_error, cli

EPS = 0.3


@pytest.fixture(scope="module")
def generated(run_dir, tmp_path_factory):
    """A generator poison set made against the session's digits CNN (imported, not retrained)."""
    out = tmp_path_factory.mktemp("poisons") / "gen"
    return generate(GenerateConfig(surrogates=(str(run_dir),), out=out, alpha=1.0, eps=EPS, epochs=3, width=8))


@pytest.fixture(scope="module")
def polytope(run_dir, digits, tmp_path_factory):
    """Convex Polytope poisons against the test image the CNN finds closest to the poison class."""
    target, poison_class = closest_call(run_dir, digits)
    out = tmp_path_factory.mktemp("poisons") / "cp"
    return craft(CraftConfig("convex-polytope", (str(run_dir),), target, poison_class, out, poisons=15, eps=0.25,
                             iterations=200))


def closest_call(run_dir, digits) -> tuple[int, int]:
    from robustdeploy.train import load_run

    model, _ = load_run(run_dir)
    with torch.no_grad():
        top = model(digits.test.x).softmax(1).topk(2, 1)
    margin = (top.values[:, 0] - top.values[:, 1]).masked_fill(top.indices[:, 0] != digits.test.y, 9.0)
    index = int(margin.argmin())
    return index, int(top.indices[index, 1])


def test_generator_perturbation_is_bounded():
    generator = UNetGenerator(3, eps=0.05, width=4)
    with torch.no_grad():
        delta = generator(torch.rand(4, 3, 11, 13) * 10)  # odd sizes, inputs far outside [0, 1]
    assert delta.shape == (4, 3, 11, 13) and float(delta.abs().max()) <= 0.05


def test_training_the_generator_lowers_the_surrogate_objective(run_dir, digits):
    (surrogate,) = prepare((str(run_dir),), DataConfig(), digits, run_dir.parent / "unused", 1, 0, "cpu")
    x, y = digits.train.x[:256], digits.train.y[:256]
    config = GenerateConfig(surrogates=(str(run_dir),), out=run_dir.parent / "unused", alpha=0.0, eps=0.1,
                            epochs=3, batch_size=32, width=4, objective="features", generator="unet",
                            detector="pixels", disc_weight=0.1)
    _, _, history = train_generator([surrogate], x, y, config, 10)
    distance = [row["surrogate"] for row in history]  # the generator minimises minus this distance
    assert len(distance) == 3 and distance[-1] > distance[0] > 0


def test_generated_set_is_stored_within_the_bound(generated, digits):
    poisons = load_poison_set(generated)
    assert torch.equal(poisons.index, torch.arange(len(digits.train)))
    delta = poisons.x - digits.train.x
    assert float(delta.abs().max()) <= EPS + 1e-6 and float(delta.abs().max()) > 0
    assert torch.equal(poisons.x, torch.round(poisons.x * 255) / 255)  # 8-bit, as a deployment stores images
    m = poisons.manifest
    assert m["eps"] == EPS and m["alpha"] == 1.0 and m["data"]["name"] == "digits"
    assert m["input_shape"] == [1, 8, 8] and len(m["surrogates"]) == 1 and (generated / "grid.png").is_file()


def test_full_poisoning_lowers_clean_accuracy_on_torch_and_ort(generated, tmp_path):
    result = evaluate_poison(PoisonEvalConfig(generated, ("cnn",), (0.0, 1.0), epochs=8, out=tmp_path / "eval"))
    clean, poisoned = result["rows"]
    assert clean["white_box"] and clean["replaced"] == 0 and poisoned["replaced"] == len(load_dataset(
        DataConfig()).train)
    for runtime in ("torch", "ort-cpu"):
        assert poisoned["accuracy"][runtime] < clean["accuracy"][runtime] - 5.0
    for row in result["rows"]:
        assert row["accuracy"]["torch"] == row["accuracy"]["ort-cpu"] and row["differs_from_torch"]["ort-cpu"] == 0
        assert row["parity_passed"]  # the poisoned victim's bundle passed export parity
    stored = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert stored["format"] == "robustdeploy-poison-eval/1" and (tmp_path / "eval" / "accuracy.png").is_file()
    assert "rate 1" in poison_table(stored, markdown=True)
    run = json.loads((tmp_path / "eval" / "runs" / "cnn-rate1" / "run.json").read_text())
    assert run["train"]["poison_rate"] == 1.0 and run["metrics"]["poison"]["replaced"] == len(poisons_of(generated))


def poisons_of(path):
    return load_poison_set(path).index


def test_convex_polytope_stays_in_the_ball_and_its_objective_decreases(polytope, digits):
    poisons = load_poison_set(polytope)
    m = poisons.manifest
    assert len(poisons.index) == 15 and bool((digits.train.y[poisons.index] == m["target"]["poison_class"]).all())
    assert float((poisons.x - digits.train.x[poisons.index]).abs().max()) <= 0.25 + 1e-6
    objective = [row["objective"] for row in m["history"]]
    assert objective[-1] < objective[0]
    for c in m["info"]["coefficients"]:
        assert min(c) >= 0 and sum(c) == pytest.approx(1.0, abs=1e-4)


def test_convex_polytope_flips_its_target_on_a_white_box_victim(polytope, tmp_path):
    result = evaluate_poison(PoisonEvalConfig(polytope, ("cnn",), (0.0, 1.0), epochs=20, transfer=True,
                                              out=tmp_path / "eval"))
    clean, poisoned = result["rows"]
    assert clean["target_success"] == {"torch": False, "ort-cpu": False}
    assert poisoned["target_success"] == {"torch": True, "ort-cpu": True}


def test_feature_collision_is_bounded_and_needs_one_surrogate(run_dir, digits, tmp_path):
    config = CraftConfig("feature-collision", (str(run_dir),), 0, int(digits.test.y[0] + 1) % 10, tmp_path / "fc",
                         poisons=3, eps=0.1, iterations=20)
    poisons = load_poison_set(craft(config))
    assert float((poisons.x - digits.train.x[poisons.index]).abs().max()) <= 0.1 + 1e-6
    objective = [row["objective"] for row in poisons.manifest["history"]]
    assert objective[-1] < objective[0]
    with pytest.raises(RobustDeployError, match="one surrogate"):
        craft(CraftConfig("feature-collision", (str(run_dir), str(run_dir)), 0, 1, tmp_path / "fc2",
                          iterations=2))
    assert not (tmp_path / "fc2").exists()


def test_gtsrb_official_layout(tmp_path):
    from PIL import Image

    for cls in (0, 1):
        folder = tmp_path / "Final_Training" / "Images" / f"{cls:05d}"
        folder.mkdir(parents=True)
        lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for i in range(4):
            Image.new("RGB", (30 + i, 31), (100 * cls, 50, 20 * i)).save(folder / f"0000{i}_00000.ppm")
            lines.append(f"0000{i}_00000.ppm;{30 + i};31;5;5;25;25;{cls}")
        (folder / f"GT-{cls:05d}.csv").write_text("\n".join(lines) + "\n")
    test = tmp_path / "Final_Test" / "Images"
    test.mkdir(parents=True)
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(3):
        Image.new("RGB", (29, 29), (100 * (i % 2), 50, 0)).save(test / f"{i:05d}.ppm")
        lines.append(f"{i:05d}.ppm;29;29;5;5;25;25;{i % 2}")
    (test / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(DataConfig(name="gtsrb", data_root=str(tmp_path), image_size=12, val_fraction=0.25))
    assert data.input_shape == (3, 12, 12) and len(data.classes) == 43
    assert len(data.train) + len(data.val) == 8 and data.test.y.tolist() == [0, 1, 0]
    with pytest.raises(RobustDeployError, match="Final_Training"):
        load_dataset(DataConfig(name="gtsrb", data_root=str(tmp_path / "Final_Test")))


def test_bad_input_is_one_line(generated, tmp_path):
    assert_one_line_error(cli("poison", "generate", "--surrogate", "cnnn", "--out", tmp_path / "p"),
                          "unknown architecture 'cnnn'")
    assert_one_line_error(cli("train", "--poison", generated, "--poison-rate", "1.5", "--out", tmp_path / "r"),
                          "--poison-rate must lie in [0, 1]")
    assert_one_line_error(cli("train", "--poison", generated, "--image-size", "16", "--epochs", "1", "--out",
                              tmp_path / "r"), "shape (1, 8, 8)")
    assert_one_line_error(cli("poison", "evaluate", generated, "--victim", "cnn", "--rate", "-0.1", "--out",
                              tmp_path / "e"), "must lie in [0, 1]")
    assert not any(tmp_path.iterdir())


def test_a_set_for_another_dataset_is_refused(generated, tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "imgs" / cls / f"{i}.png")
    poisons = load_poison_set(generated)
    config = DataConfig(name="imagefolder", data_root=str(tmp_path / "imgs"))
    with pytest.raises(RobustDeployError, match="made for dataset 'digits'"):
        poisons.check_fits(config, load_dataset(config))
    with pytest.raises(RobustDeployError, match="another training split"):
        poisons.check_fits(DataConfig(seed=1), load_dataset(DataConfig(seed=1)))
