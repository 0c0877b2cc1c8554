"""Square and HopSkipJump against the deployment itself, 8-bit realisation, re-scoring, figure."""

import json

import pytest
import torch
from PIL import Image

from robustdeploy.attacks import ATTACKS, lp_norm
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluate import EvalConfig, evaluate, rescore
from robustdeploy.runtimes import create_runtime
from tests.conftest import assert_one_line_error, cli


@pytest.fixture(scope="module")
def ort(bundle_dir):
    return create_runtime(load_bundle(bundle_dir), "ort-cpu")


@pytest.mark.parametrize("name,norm,eps,budget", [("square", "linf", 0.15, 300), ("square", "l2", 1.0, 300),
                                                  ("hopskipjump", "l2", 1.5, 1500)])
def test_blackbox_attack_lowers_ort_accuracy_counting_queries(name, norm, eps, budget, ort, digits):
    x, y = digits.test.x[:40], digits.test.y[:40]
    attack = ATTACKS.create(name, norm=norm, max_queries=budget)
    before = ort.queries
    adv = attack.perturb(ort.logits, x, y, eps)
    assert ort.queries - before == int(attack.queries_per_sample.sum())  # every query went to this session
    assert int(attack.queries_per_sample.max()) <= budget
    assert adv.min() >= 0 and adv.max() <= 1 and (lp_norm(adv - x, norm) <= eps + 1e-5).all()
    clean, robust = (ort.predict(x) == y).float().mean(), (ort.predict(adv) == y).float().mean()
    assert robust < clean - 0.3, (clean, robust)


def test_hopskipjump_uses_labels_only(ort, digits):
    """Scores replaced by one-hot labels give the same result: only the argmax is used."""
    x, y = digits.test.x[:20], digits.test.y[:20]

    def labels(z):
        return torch.nn.functional.one_hot(ort.logits(z).argmax(1), 10).float()

    runs = [ATTACKS.create("hopskipjump", max_queries=800).perturb(m, x, y, 0.2) for m in (ort.logits, labels)]
    assert torch.equal(runs[0], runs[1])
    assert (ort.predict(runs[0]) != y).sum() > (ort.predict(x) != y).sum()


def test_blackbox_evaluation_is_rescorable_and_reports_rounding(bundle_dir, ort, tmp_path):
    out = tmp_path / "sq.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), attack="square", epsilons=(0.1, 0.2),
                                 limit=40, attack_params={"max_queries": 200}, out=out))
    score = result.score(0.2, "ort-cpu")
    assert score.robust_accuracy < score.clean_accuracy and 1 <= score.queries_median <= 200
    assert rescore(out, ort) == {e: result.score(e, "ort-cpu").robust_accuracy for e in (0.1, 0.2)}
    saved = json.loads(out.read_text())
    rounding = saved["budgets"][0]["scores"][0]["rounding"]
    assert rounding["fooled_before"] - rounding["stopped_fooling"] + rounding["started_fooling"] \
        == rounding["fooled_after"]
    assert {c["name"] for c in saved["checks"]} >= {"monotone_budget", "input_gradients", "outputs_are_logits"}
    assert Image.open(tmp_path / saved["figure"]).size[0] > 100


def test_whitebox_rounding_report_matches_stored_examples(bundle_dir, tmp_path, digits):
    from safetensors.torch import load_file

    out = tmp_path / "pgd.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch",), epsilons=(0.1,), limit=60, out=out))
    stored = load_file(str(out.with_suffix(".adv.safetensors")))
    model = load_bundle(bundle_dir).reference_model()
    with torch.no_grad():
        raw_fooled = int((model(stored["eps=0.1/raw"]).argmax(1) != stored["y"]).sum())
        after = int((model(stored["eps=0.1"]).argmax(1) != stored["y"]).sum())
    report = result.budgets[0].rounding
    assert (report["fooled_before"], report["fooled_after"]) == (raw_fooled, after)
    assert torch.equal(stored["eps=0.1"], (stored["eps=0.1"] * 255).round() / 255)  # on the 8-bit grid
    assert 100.0 * (60 - after) / 60 == pytest.approx(result.score(0.1, "torch").robust_accuracy)


def test_bad_blackbox_settings(bundle_dir, tmp_path):
    with pytest.raises(RobustDeployError, match="max_queries"):
        ATTACKS.create("square", max_queries=0)
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "square", "--attack-opt", "max_queries=0"),
                          "max_queries")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "square", "-r", "ort-cuda", "--out",
                              tmp_path / "r.json"), "ort-cuda")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "hopskipjump", "--norm", "l1"), "supports linf, l2")
    assert not (tmp_path / "r.json").exists()
