"""Seed 004: OT patch gradients through POT, patch placement, LGS ONNX parity, bad input."""

from __future__ import annotations

import pytest
import torch

from robustdeploy.attacks.ot_patch import (
    FeatureHooks,
    PatchConfig,
    apply_patch,
    craft_patch,
    default_layers,
    resize_patch,
    scaled_side,
    sliced_wasserstein_sq,
    total_variation,
)
from robustdeploy.defenses.lgs import LocalGradientSmoothing
from robustdeploy.errors import RobustDeployError
from tests.conftest import assert_one_line_error, cli


def test_gradients_flow_through_pot():
    a = torch.randn(32, 6, requires_grad=True)
    loss = sliced_wasserstein_sq(a, torch.randn(40, 6) + 2.0, n_projections=500, seed=0)
    loss.backward()
    assert loss.item() > 0 and a.grad is not None and a.grad.abs().sum() > 0


def test_apply_patch_places_patch_and_passes_gradient():
    patch = torch.full((1, 3, 3), 0.5, requires_grad=True)
    out = apply_patch(torch.zeros(2, 1, 8, 8), patch, torch.tensor([[0, 0], [5, 2]]))
    assert out[0, 0, :3, :3].eq(0.5).all() and out[1, 0, 5:, 2:5].eq(0.5).all() and out.sum() == 0.5 * 18
    out.sum().backward()
    assert patch.grad.eq(2.0).all()


def test_lgs_is_refused_on_images_too_small_for_it(bundle_dir):
    with pytest.raises(RobustDeployError, match="at least 32 px"):
        LocalGradientSmoothing.for_size(8)
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "1", "--lgs"), "LGS needs images of at least")


def test_lgs_patch_reports_clean_accuracy_with_and_without_lgs(tmp_path):
    from robustdeploy.data import DataConfig
    from robustdeploy.evaluation.plans.patch import PatchEvalConfig, evaluate_patch
    from robustdeploy.evaluation.plans.rescore import rescore
    from robustdeploy.export import ExportConfig, export_bundle
    from robustdeploy.recipe import train
    from robustdeploy.train import TrainConfig

    train(TrainConfig(epochs=1, data=DataConfig(image_size=32)), tmp_path / "run")
    export_bundle(ExportConfig(run_dir=tmp_path / "run", out=tmp_path / "bundle"))
    config = PatchConfig(target=3, method="ce", steps=2, batch_size=64)
    out = tmp_path / "patch.json"
    result, _ = evaluate_patch(PatchEvalConfig(tmp_path / "bundle", config, lgs=True, limit=60, out=out))
    cells = {(c["runtime"], c["attack"]): c for c in result.cells}
    assert set(cells) == {("run/torch", "patch"), ("run/ort-cpu", "patch"),
                          *[(f"run/{r}+lgs", a) for r in ("torch", "ort-cpu") for a in ("patch", "adaptive",
                                                                                         "worst case")]}
    assert abs(cells["run/torch+lgs", "patch"]["clean_accuracy"] - cells["run/ort-cpu+lgs", "patch"]
               ["clean_accuracy"]) < 2  # LGS's ONNX graph is parity-checked against torch
    assert cells["run/torch", "patch"]["threat"] == "white-box on run/torch" and \
        cells["run/ort-cpu", "patch"]["threat"] == "transfer from run/torch"
    assert cells["run/torch+lgs", "patch"]["threat"] == "oblivious: crafted on run/torch without LGS" and \
        cells["run/torch+lgs", "adaptive"]["threat"] == "adaptive: BPDA through LGS, crafted on run/torch"
    for runtime in ("run/torch+lgs", "run/ort-cpu+lgs"):  # per image, the attacker's better patch
        worst = cells[runtime, "worst case"]
        assert worst["tsuc"] >= max(cells[runtime, a]["tsuc"] for a in ("patch", "adaptive"))
        assert worst["fooling_rate"] >= max(cells[runtime, a]["fooling_rate"] for a in ("patch", "adaptive"))
    assert rescore(out) == result.cells
    assert [c["name"] for c in result.checks] == ["adaptive_patch_weaker"]
    assert cli("report", out, "--markdown", tmp_path / "r.md").returncode == 0
    assert f"| run/ort-cpu+lgs | lgs | worst case | {result.samples} |" in (tmp_path / "r.md").read_text()


def test_an_adaptive_patch_weaker_than_the_oblivious_one_is_flagged():
    from robustdeploy.evaluation.checks import adaptive_patch_weaker

    def cell(runtime, defense, attack, tsuc):
        return {"runtime": runtime, "defense": defense, "attack": attack, "tsuc": tsuc}

    plain = [cell("m/torch", "none", "patch", 40.0)]
    assert adaptive_patch_weaker(plain) is None  # no defense, no adaptive patch
    strong = [*plain, cell("m/torch+lgs", "lgs", "patch", 30.0), cell("m/torch+lgs", "lgs", "adaptive", 35.0)]
    assert adaptive_patch_weaker(strong).passed
    weak = [*plain, cell("m/torch+lgs", "lgs", "patch", 33.6), cell("m/torch+lgs", "lgs", "adaptive", 30.7)]
    check = adaptive_patch_weaker(weak)
    assert not check.passed and "m/torch+lgs: adaptive 30.70% < oblivious 33.60%" in check.detail


def test_bpda_passes_the_gradient_that_lgs_clamps_away():
    """LGS zeroes the gradient of every strongly damped pixel (its clamp); the adaptive attack's view keeps LGS's
    output and passes the gradient straight through."""
    from robustdeploy.defenses.base import Bpda

    lgs = LocalGradientSmoothing.for_size(32)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:16, 8:16] = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))  # a high-gradient patch
    x.requires_grad_(True)
    plain, = torch.autograd.grad(lgs(x)[..., 8:16, 8:16].sum(), x)
    through = Bpda(lgs)
    out = through(x)
    bpda, = torch.autograd.grad(out[..., 8:16, 8:16].sum(), x)
    assert torch.equal(out, lgs(x))
    assert (plain[..., 8:16, 8:16] == 0).any() and (bpda[..., 8:16, 8:16] == 1).all()


def test_tv_weight_lowers_the_patch_total_variation(bundle_dir, digits):
    from robustdeploy.bundle import load_bundle

    model, train = load_bundle(bundle_dir).reference_model(), digits.split("train")
    tv = [total_variation(craft_patch(model, train.x, train.y, PatchConfig(
        target=3, method="ce", patch_size=0.5, steps=40, lr=0.05, batch_size=64, tv_weight=weight)).patch).item()
        for weight in (0.0, 5.0)]
    assert tv[1] < 0.5 * tv[0]


def test_scale_eot_draws_sizes_across_the_range_and_resizes_differentiably():
    generator = torch.Generator().manual_seed(0)
    sides = {scaled_side(10, (0.5, 1.5), (32, 32), generator) for _ in range(200)}
    assert min(sides) == 5 and max(sides) == 15 and len(sides) == 11
    assert {scaled_side(10, (1.0, 4.0), (16, 16), generator) for _ in range(50)} <= set(range(10, 17))
    patch = torch.rand(1, 4, 4, requires_grad=True)
    big = resize_patch(patch, 8)
    assert big.shape == (1, 8, 8) and resize_patch(patch, 4) is patch
    big.sum().backward()
    assert patch.grad.abs().sum() > 0


def test_scale_eot_patch_keeps_its_nominal_size(bundle_dir, digits):
    from robustdeploy.bundle import load_bundle

    model, train = load_bundle(bundle_dir).reference_model(), digits.split("train")
    result = craft_patch(model, train.x, train.y, PatchConfig(target=3, method="ce", patch_size=0.25, steps=3,
                                                              batch_size=16, scale=(0.5, 1.5)))
    assert result.patch.shape == (1, 4, 4) and result.config.scale == (0.5, 1.5)


def test_timm_default_layers_are_stage_outputs_pooled_per_channel():
    from robustdeploy.models.base import Classifier, create_net

    model = Classifier(create_net("timm:resnet10t", (1, 32, 32), 10), (0.5,), (0.5,)).eval()
    layers = default_layers(model)
    assert layers == ("net.act1", "net.layer1", "net.layer2", "net.layer3", "net.layer4")
    hooks = FeatureHooks(model, layers)
    with torch.no_grad():
        model(torch.rand(3, 1, 32, 32))
    hooks.remove()
    assert [hooks.features[name].shape for name in layers] == [(3, 64), (3, 64), (3, 128), (3, 256), (3, 512)]


@pytest.mark.parametrize("kwargs", [{"patch_size": 1.0}, {"patch_size": 0.0}, {"method": "l2"},
                                    {"scale": (0.0, 1.0)}, {"scale": (1.5, 1.0)}])
def test_bad_patch_config(kwargs):
    with pytest.raises(RobustDeployError):
        PatchConfig(target=0, **kwargs)


def test_cli_target_out_of_range(bundle_dir):
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "10", "--steps", "1"), "out of range")
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "1", "--patch-size", "1.5"), "patch-size")
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "1", "--scale", "2", "1"), "--scale")


def test_sw_patch_raises_targeted_success_on_torch_and_ort(bundle_dir, tmp_path):
    from robustdeploy.evaluation.plans.patch import PatchEvalConfig, evaluate_patch
    from robustdeploy.evaluation.plans.rescore import rescore

    config = PatchConfig(target=3, patch_size=0.25, steps=60, lr=0.1, batch_size=64, n_projections=100)
    out = tmp_path / "patch.json"
    result, patch = evaluate_patch(PatchEvalConfig(bundle_dir, config, out=out))
    torch_score, ort_score = result.cells
    assert patch.shape == (1, 4, 4) and torch.equal(patch, torch.round(patch * 255) / 255)
    assert torch_score["tsuc"] > torch_score["clean_target_rate"] + 5
    assert abs(torch_score["tsuc"] - ort_score["tsuc"]) * torch_score["samples"] <= 100
    assert rescore(out) == result.cells and out.with_suffix(".patch.png").is_file()


def test_patch_takes_data_root_and_checks_it(bundle_dir):
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "1", "--steps", "1", "--data-root", "/tmp"),
                          "built-in")
