"""The binarization test (Zimmermann et al. 2022) on the digits CNN: a working cascade finds the adversarial
example that surely exists, a deliberately weakened one does not and fails the test."""

from __future__ import annotations

import math

import pytest
import torch

from robustdeploy.attacks import AttackSpec
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.binarize import BinarizationConfig, binarization_test, binarize, score
from robustdeploy.evaluation.session import open_session
from tests.conftest import cli

STRONG = (AttackSpec("fgsm"), AttackSpec("pgd", {"steps": 10}))
# one step of 1/1000 from the clean image: cannot reach the boundary at eps=0.1 (25 grid steps)
WEAK = (AttackSpec("pgd", {"steps": 1, "step_size": 0.001, "random_start": False}, "weak-pgd"),)


def test_binarised_classifier_has_an_adversarial_example_within_budget(bundle_dir):
    config = BinarizationConfig(bundle=bundle_dir, runtimes=("torch",), limit=3)
    session = open_session(config)
    x = session.test.x[:1]
    model = binarize(session.reference, x, config, "linf", torch.Generator().manual_seed(0))
    assert model is not None
    assert model(x).argmax(1).item() == 0  # the clean sample is class 0
    corners = x + torch.sign(torch.rand(64, *x.shape[1:]) - 0.5) * 25 / 255
    corners = (torch.round(corners.clamp(0, 1) * 255) / 255)
    assert (corners - x).abs().amax() <= config.eps
    assert (model(corners).argmax(1) == 1).any()  # some point inside the budget is class 1


def test_working_cascade_passes_and_weakened_attack_fails(bundle_dir, tmp_path):
    strong = binarization_test(BinarizationConfig(bundle=bundle_dir, limit=8, attacks=STRONG, out=tmp_path / "b.json"))
    assert strong.valid >= 4 and strong.passed and strong.success == 100.0
    assert (tmp_path / "b.json").exists()
    assert max(a["optimality"] for a in strong.attacks.values()) == 1.0
    weak = binarization_test(BinarizationConfig(bundle=bundle_dir, limit=8, attacks=WEAK))
    assert weak.valid == strong.valid  # the same binarised classifiers (same seed)
    assert not weak.passed and weak.success < 50.0
    assert "FAILED" in weak.line()


def test_optimality_score_measures_distance_to_the_best_attack():
    norms = {"a": [0.1, 0.2, math.inf], "b": [0.05, math.inf, math.inf]}
    report = score(norms, BinarizationConfig(bundle=None), "linf", 4)
    assert report.best_norm == [0.05, 0.2, None]
    assert report.success == pytest.approx(200 / 3, abs=0.01) and not report.passed
    assert report.attacks["a"]["optimality"] == pytest.approx((0.5 + 1.0) / 2)
    assert report.attacks["b"]["optimality"] == pytest.approx(0.5)
    assert report.attacks["a"]["mean_distance_to_best"] == pytest.approx(0.025)


def test_bad_settings_are_refused():
    with pytest.raises(RobustDeployError, match="eta"):
        BinarizationConfig(bundle=None, eta=1.5)


def test_check_binarization_item(bundle_dir, tmp_path):
    proc = cli("check", bundle_dir, "--limit", "4", "--no-diff", "--binarization", "--eps", "0.1", "--out",
               tmp_path / "c.json", "--markdown", tmp_path / "c.md", "--junit", tmp_path / "c.xml", cwd=tmp_path)
    assert "PASSED torch binarization test eps=0.1" in proc.stdout, proc.stdout + proc.stderr
    assert "optimality" in proc.stdout and "binarization test" in (tmp_path / "c.md").read_text()
