"""Each sanity check fires on a constructed bad case and stays quiet on the good one."""

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.evaluation import checks


class Rounded(torch.nn.Module):
    """A model with a rounding input layer: zero gradients everywhere (gradient masking)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_gradient_and_probability_checks(bundle_dir, digits):
    model = load_bundle(bundle_dir).reference_model().requires_grad_(False)
    x, y = digits.test.x[:50], digits.test.y[:50]
    assert checks.input_gradients(model, x, y).passed and checks.input_gradients(model, x, y, "ce").passed
    masked = checks.input_gradients(Rounded(model), x, y, "ce")
    with torch.no_grad():
        right = int((Rounded(model)(x).argmax(1) == y).sum())
    assert not masked.passed and f"{right} of {right} correctly" in masked.detail and "ce loss" in masked.detail
    assert "black-box attack" in masked.detail  # rounding masks every loss, the margin too
    with torch.no_grad():
        logits = model(x)
    assert checks.outputs_are_logits(logits).passed
    assert not checks.outputs_are_logits(logits.softmax(1)).passed


def test_budget_and_unbounded_checks():
    assert checks.monotone_budget({"ort-cpu": [(0.1, 60.0), (0.2, 30.0)]}).passed
    rising = checks.monotone_budget({"ort-cpu": [(0.2, 40.0), (0.1, 30.0)]})
    assert not rising.passed and "ort-cpu" in rising.detail
    assert checks.unbounded_success({("torch", 1.0): 100.0}, "linf", 64).passed
    assert not checks.unbounded_success({("torch", 1.0): 80.0}, "linf", 64).passed
    assert checks.unbounded_success({("torch", 0.3): 80.0}, "linf", 64) is None


def test_cascade_gain_flags_black_box_attacks_that_beat_the_gradient_ones():
    attacks = [{"label": "pgd", "needs": "gradients"}, {"label": "square", "needs": "scores"}]

    def cells(after_square):
        return [{"runtime": "ort-cpu", "eps": 0.1, "attack": "pgd", "robust_accuracy": 60.0},
                {"runtime": "ort-cpu", "eps": 0.1, "attack": "square", "robust_accuracy": after_square}]

    assert checks.cascade_gain(cells(59.5), attacks).passed
    masked = checks.cascade_gain(cells(40.0), attacks)
    assert not masked.passed and "60.00% after the gradient attacks -> 40.00%" in masked.detail
    assert checks.cascade_gain(cells(40.0), attacks[:1]) is None


def test_distillation_with_ce_is_flagged_before_the_attack_runs(tmp_path, caplog):
    """A manifest that records a masking defense makes evaluate warn, naming the loss to use."""
    from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
    from robustdeploy.export import ExportConfig, export_bundle
    from robustdeploy.recipe import train
    from robustdeploy.train import TrainConfig

    train(TrainConfig(epochs=2, defense="distillation", defense_params={"temperature": 100}), tmp_path / "run")
    export_bundle(ExportConfig(run_dir=tmp_path / "run", out=tmp_path / "b"))
    caplog.clear()  # only what evaluate logs
    with caplog.at_level("INFO", logger="robustdeploy"):
        result = evaluate(EvalConfig(bundle=tmp_path / "b", limit=40, out=tmp_path / "r.json"))
    failed = {c["name"]: c["detail"] for c in result.checks if not c["passed"]}
    assert "masking_defense" in failed and "--loss margin" in failed["masking_defense"]
    ours = [r.getMessage() for r in caplog.records if r.name == "robustdeploy"]
    assert ours[0].startswith("warning: check") and ours[-1].startswith("pgd/torch/eps=0.1: ")  # warned first
    margin = evaluate(EvalConfig(bundle=tmp_path / "b", limit=40, attack_params={"loss": "margin"},
                                 out=tmp_path / "m.json"))
    assert "masking_defense" not in {c["name"] for c in margin.checks if not c["passed"]}
    assert margin.cell("torch", 0.1)["robust_accuracy"] <= result.cell("torch", 0.1)["robust_accuracy"]
