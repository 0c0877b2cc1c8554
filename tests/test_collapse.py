"""A collapsed (near-constant) model: `train` refuses it, the evaluations flag it; a sound model passes both."""

import math

import torch

from robustdeploy.collapse import diagnose
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.train import load_run, save_run
from tests.conftest import assert_one_line_error, cli


def test_train_refuses_a_collapsed_model(tmp_path):
    """Adam at lr 1 on digits ends on one class: one error line naming the cause and a fix, no run folder."""
    proc = cli("-q", "train", "--lr", "1", "--epochs", "1", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert_one_line_error(proc, "training collapsed", "of the val predictions", "lower --lr")
    assert not (tmp_path / "run").exists()


def test_diagnose_names_each_sign_and_spares_a_flat_distillation_loss():
    y = torch.arange(100) % 10
    constant = torch.full((100,), 3)
    cause = diagnose(constant, y, 10, [math.log(10)] * 3)
    assert "within 5 points of chance" in cause and "'3' takes 100%" in cause and "ln 10" in cause
    assert diagnose(y.clone(), y, 10, [math.log(10)] * 3) is None  # right labels, loss at ln K (distillation at T)
    assert diagnose(torch.full((100,), 3), torch.full((100,), 3), 10, [0.1]) is None  # the labels are one class


def constant_run(run_dir, out, label: int = 4):
    """The digits CNN with its last layer replaced by a constant vote for `label`."""
    model, record = load_run(run_dir)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), last.out_features).float() * 5)
    save_run(model, record, out)
    return out


def test_evaluate_flags_a_constant_model_and_not_a_trained_one(run_dir, bundle_dir, tmp_path):
    export_bundle(ExportConfig(run_dir=constant_run(run_dir, tmp_path / "run"), out=tmp_path / "b"))
    flagged = evaluate(EvalConfig(bundle=tmp_path / "b", limit=60, out=tmp_path / "c.json"))
    spread = {c["name"]: c for c in flagged.checks}["prediction_spread"]
    assert not spread["passed"] and "'4' takes 100% of the clean predictions" in spread["detail"]
    sound = evaluate(EvalConfig(bundle=bundle_dir, limit=60, out=tmp_path / "s.json"))
    assert {c["name"]: c for c in sound.checks}["prediction_spread"]["passed"]
