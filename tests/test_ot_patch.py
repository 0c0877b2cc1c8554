"""Seed 004: OT patch gradients through POT, patch placement, LGS ONNX parity, bad input."""

from __future__ import annotations

import pytest
import torch

from robustdeploy.attacks.ot_patch import PatchConfig, apply_patch, sliced_wasserstein_sq
from robustdeploy.bundle import load_bundle
from robustdeploy.defenses.lgs import LocalGradientSmoothing
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.patch import lgs_runtimes
from robustdeploy.models import Composite
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


def test_lgs_classifier_onnx_matches_torch(bundle_dir, digits, tmp_path):
    bundle = load_bundle(bundle_dir)
    x = digits.split("test").x[:64]
    torch_rt, ort_rt = lgs_runtimes(bundle, x)
    assert torch.allclose(torch_rt.logits(x), ort_rt.logits(x), atol=1e-4, rtol=1e-3)
    model = Composite(LocalGradientSmoothing.for_size(8), bundle.reference_model())
    assert not torch.equal(model.transform(x), x)


@pytest.mark.parametrize("kwargs", [{"patch_size": 1.0}, {"patch_size": 0.0}, {"method": "l2"}])
def test_bad_patch_config(kwargs):
    with pytest.raises(RobustDeployError):
        PatchConfig(target=0, **kwargs)


def test_cli_target_out_of_range(bundle_dir):
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "10", "--steps", "1"), "out of range")
    assert_one_line_error(cli("patch", bundle_dir, "--target-class", "1", "--patch-size", "1.5"), "patch-size")


def test_sw_patch_raises_targeted_success_on_torch_and_ort(bundle_dir, tmp_path):
    from robustdeploy.evaluation.patch import PatchEvalConfig, evaluate_patch
    from robustdeploy.evaluation.rescore import rescore

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
