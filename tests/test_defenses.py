"""Training-side defenses on real digits: purifier ONNX parity, adversarial training, distillation, honest eval."""

from __future__ import annotations

import pytest
import torch

from robustdeploy.attacks import ATTACKS
from robustdeploy.bundle import load_bundle
from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.models import Composite
from robustdeploy.recipe import train
from robustdeploy.runtimes import create_runtime
from robustdeploy.train import TrainConfig, load_run
from tests.conftest import assert_one_line_error, cli


def robust_accuracy(model, x, y, eps=0.1, steps=10, loss="ce") -> float:
    attack = ATTACKS.create("pgd", steps=steps, loss=loss, seed=0)
    adv = attack.perturb(model.eval().requires_grad_(False), x, y, eps)
    with torch.no_grad():
        return 100.0 * float((model(adv).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def purifier_bundle(run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("purifier")
    train(TrainConfig(epochs=3, defense="purifier", defense_params={"base": str(run_dir)}), root / "run")
    bundle, parity = export_bundle(ExportConfig(run_dir=root / "run", out=root / "bundle"))
    return bundle, parity


def test_purifier_plus_classifier_is_one_onnx_graph_matching_torch(purifier_bundle, digits):
    bundle, parity = purifier_bundle
    assert parity.passed
    assert bundle.manifest["model"]["extra"] == {"purifier": "conv-ae"}
    reference = bundle.reference_model()
    assert isinstance(reference, Composite)
    x = digits.test.x[:100]
    ort = create_runtime(bundle, "ort-cpu").logits(x)
    with torch.no_grad():
        torch_logits, bare = reference(x), reference.classifier(x)
    assert (ort - torch_logits).abs().max() < 1e-4
    assert (bare - torch_logits).abs().max() > 1e-2  # the purifier really is inside the exported graph


@pytest.fixture(scope="module")
def vae_bundle(run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    train(TrainConfig(epochs=10, defense="purifier", defense_params={"base": str(run_dir), "purifier": "conv-vae"}),
          root / "run")
    return export_bundle(ExportConfig(run_dir=root / "run", out=root / "bundle"))[0]


def test_vae_purifier_plus_classifier_is_one_onnx_graph_matching_torch(vae_bundle, digits):
    assert vae_bundle.manifest["model"]["extra"] == {"purifier": "conv-vae"}
    assert vae_bundle.manifest["run"]["metrics"]["defense"]["loss"] == "elbo"
    assert vae_bundle.manifest["run"]["metrics"]["defense"]["kl_weight"] == 0.01
    reference = vae_bundle.reference_model()
    x = digits.test.x[:100]
    with torch.no_grad():
        torch_logits, again, bare = reference(x), reference(x), reference.classifier(x)
    assert torch.equal(torch_logits, again)  # the deployed graph uses z = mu: no sampling
    assert (create_runtime(vae_bundle, "ort-cpu").logits(x) - torch_logits).abs().max() < 1e-4
    assert (bare - torch_logits).abs().max() > 1e-2
    assert (torch_logits.argmax(1) == digits.test.y[:100]).float().mean() >= 0.7  # keeps the digit (beta 1: ~25%)
    reference.transform.sample = True
    with torch.no_grad():
        assert not torch.equal(reference(x), torch_logits)  # sampling z really is inside the VAE


def test_vae_adaptive_attack_uses_eot_over_sampling(vae_bundle, tmp_path):
    out = tmp_path / "vae.json"
    result = evaluate_defense(DefenseEvalConfig(bundle=vae_bundle.path, eps=0.2, steps=5, limit=40, out=out))
    assert {s["source"] for s in result.sets} == {"classifier", "torch+eot10"}
    robust = {(c["runtime"], c["attack"]): c["robust_accuracy"] for c in result.cells}
    assert robust["torch", "adaptive:pgd"] < 50 and robust["ort-cpu", "adaptive:pgd"] < 50
    assert rescore(out) == result.cells


def test_purifier_keeps_the_base_classifier_weights(purifier_bundle, run_dir):
    base, _ = load_run(run_dir)
    composite = purifier_bundle[0].reference_model()
    for key, value in base.state_dict().items():
        assert torch.equal(composite.classifier.state_dict()[key], value)


@pytest.mark.parametrize("inner", ["madry", "trades"])
def test_adversarial_training_raises_pgd_robust_accuracy(inner, run_dir, digits, tmp_path):
    record = train(TrainConfig(epochs=6, defense="adv-train",
                               defense_params={"eps": 0.1, "attack_steps": 5, "inner": inner}), tmp_path / "adv")
    assert record.metrics["defense"]["eps"] == 0.1 and record.metrics["defense"]["inner"] == inner
    defended, _ = load_run(tmp_path / "adv")
    standard, _ = load_run(run_dir)
    x, y = digits.test.x[:150], digits.test.y[:150]
    assert robust_accuracy(defended, x, y) > robust_accuracy(standard, x, y) + 5


def test_distillation_student_works_and_margin_pgd_beats_ce_pgd(digits, tmp_path):
    record = train(TrainConfig(epochs=8, defense="distillation", defense_params={"temperature": 50}),
                   tmp_path / "distilled")
    assert record.metrics["test_accuracy"] > 80
    assert record.metrics["defense"]["temperature"] == 50
    student, _ = load_run(tmp_path / "distilled")
    x, y = digits.test.x[:150], digits.test.y[:150]
    assert robust_accuracy(student, x, y, loss="margin") < robust_accuracy(student, x, y, loss="ce")


def test_defense_eval_reports_both_ways_on_both_runtimes(purifier_bundle, tmp_path):
    bundle, _ = purifier_bundle
    out = tmp_path / "r.json"
    result = evaluate_defense(DefenseEvalConfig(bundle=bundle.path, eps=0.1, steps=10, limit=80, out=out))
    assert result.extra["defense"] == "purifier" and result.samples == 80
    robust = {(c["runtime"], c["attack"]): c["robust_accuracy"] for c in result.cells}
    stages = ("pgd", "apgd:dlr", "apgd-t")  # the cascade: worst case after each stage
    assert set(robust) == {(r, f"{g}:{a}") for r in ("torch", "ort-cpu") for g in ("oblivious", "adaptive")
                           for a in stages} | {("baseline", f"oblivious:{a}") for a in stages}
    assert robust["torch", "adaptive:apgd:dlr"] <= robust["torch", "adaptive:pgd"]
    assert robust["torch", "adaptive:pgd"] < robust["torch", "oblivious:pgd"] <= 100  # through the purifier
    assert abs(robust["torch", "adaptive:pgd"] - robust["ort-cpu", "adaptive:pgd"]) <= 2.5
    assert {s["source"] for s in result.sets} == {"classifier", "torch"}
    assert rescore(out) == result.cells


def test_defense_eval_verdict_compares_with_the_baseline_under_the_same_adaptive_attack(run_dir, bundle_dir,
                                                                                          tmp_path):
    train(TrainConfig(epochs=6, lr_schedule="constant", defense="adv-train",
                      defense_params={"eps": 0.1, "attack_steps": 5, "eps_ramp": 0}),
          tmp_path / "adv")
    export_bundle(ExportConfig(run_dir=tmp_path / "adv", out=tmp_path / "adv-bundle"))
    verdicts, robust = {}, {}
    for name, bundle in (("adv-train", tmp_path / "adv-bundle"), ("none", bundle_dir)):
        out = tmp_path / f"{name}.json"
        result = evaluate_defense(DefenseEvalConfig(bundle=bundle, baseline=run_dir, eps=0.1, steps=10, limit=100,
                                                    out=out))
        verdicts[name] = result.extra["verdicts"]
        robust[name] = {c["runtime"]: c["robust_accuracy"] for c in result.cells if c["attack"].endswith("apgd:dlr")
                        and (c["attack"].startswith("adaptive") or c["runtime"] == "baseline")}
        assert rescore(out) == result.cells
    for runtime in ("torch", "ort-cpu"):
        assert robust["adv-train"][runtime] > robust["adv-train"]["baseline"]  # measured, not assumed
        assert verdicts["adv-train"][runtime].startswith("robust beyond the baseline")
        assert verdicts["none"][runtime].startswith("no robustness beyond the baseline (+0.0 points")  # same model


def test_adversarial_training_takes_any_gradient_attack(tmp_path):
    record = train(TrainConfig(epochs=1, defense="adv-train", defense_params={
        "eps": 0.1, "attack_steps": 2, "attack": "apgd", "inner": "early-stop"}), tmp_path / "a")
    assert record.metrics["defense"]["attack"] == "apgd" and record.metrics["defense"]["inner"] == "early-stop"
    assert_one_line_error(cli("train", "--epochs", "1", "--out", tmp_path / "b", "--defense", "adv-train", "--eps",
                              "0.1", "--inner", "early-stop", "--train-attack", "square"), "gradient attack")


def test_defense_eval_needs_a_baseline_for_distillation(tmp_path):
    run = tmp_path / "d"
    train(TrainConfig(epochs=1, defense="distillation", defense_params={"temperature": 10}), run)
    export_bundle(ExportConfig(run_dir=run, out=tmp_path / "b"))
    proc = cli("defend-eval", tmp_path / "b", "--limit", "5")
    assert_one_line_error(proc, "--baseline")
    assert load_bundle(tmp_path / "b").manifest["run"]["train"]["defense"] == "distillation"


@pytest.mark.parametrize("args, needle", [
    (["--defense", "distillation", "--temperature", "0"], "--temperature must be positive"),
    (["--defense", "distilation"], "did you mean 'distillation'"),
    (["--defense", "adv-train"], "needs --eps"),
    (["--defense", "adv-train", "--eps", "0.1", "--inner", "fast"], "unknown --inner 'fast'"),
    (["--defense", "adv-train", "--eps", "0.1", "--train-attack", "fgsm"], "applies to --inner early-stop"),
    (["--defense", "adv-train", "--eps", "0.1", "--beta", "3"], "applies to --inner trades"),
    (["--defense", "purifier", "--beta", "0.1"], "the conv-ae purifier has none"),
    (["--defense", "purifier", "--purifier", "conv-vae", "--beta", "0"], "must be positive"),
])
def test_train_defense_bad_input_is_one_line(args, needle, tmp_path):
    assert_one_line_error(cli("train", "--epochs", "1", "--out", tmp_path / "r", *args), needle)
