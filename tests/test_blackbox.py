"""Square and HopSkipJump against the deployment itself, 8-bit realisation, re-scoring, figure."""

import json

import pytest
import torch
from PIL import Image

from robustdeploy.attacks import ATTACKS, lp_norm
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.plans.rescore import rescore
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


def test_blackbox_evaluation_runs_on_each_runtime_on_the_grid_and_is_rescorable(bundle_dir, ort, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "sq.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch", "ort-cpu"), attacks=("square",),
                                 epsilons=(0.1, 0.2), limit=40, attack_params={"max_queries": 200}, out=out))
    cell = result.cell("ort-cpu", 0.2)
    assert cell["robust_accuracy"] < cell["clean_accuracy"]
    mine = next(s for s in result.sets if s["source"] == "ort-cpu" and s["eps"] == 0.2)
    assert 1 <= mine["queries_median"] <= 200 and {s["source"] for s in result.sets} == {"torch", "ort-cpu"}
    rounding = mine["rounding"]
    assert rounding["fooled_before"] - rounding["stopped_fooling"] + rounding["started_fooling"] \
        == rounding["fooled_after"]
    assert rounding["stopped_fooling"] == 0  # the queries were 8-bit images: nothing to lose to rounding
    stored = load_file(str(tmp_path / result.adversarial_file))
    adv = stored[mine["key"]]
    assert torch.equal(adv, torch.round(adv * 255) / 255) and (adv - stored["x"]).abs().max() <= 0.2 + 1e-6
    assert rescore(out) == result.cells
    saved = json.loads(out.read_text())
    assert {c["name"] for c in saved["checks"]} >= {"monotone_budget", "input_gradients", "outputs_are_logits"}
    assert Image.open(tmp_path / saved["figure"]).size[0] > 100


def test_bad_blackbox_settings(bundle_dir, tmp_path):
    with pytest.raises(RobustDeployError, match="max_queries"):
        ATTACKS.create("square", max_queries=0)
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "square", "--attack-opt", "max_queries=0"),
                          "max_queries")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "square", "-r", "ort-cuda", "--out",
                              tmp_path / "r.json"), "ort-cuda")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "hopskipjump", "--norm", "l1"), "supports linf, l2")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 0.15)])
def test_hopskipjump_that_fools_in_float_keeps_fooling_after_rounding(norm, eps, ort, digits):
    """On the grid (as the evaluation core runs it) every kept example is an 8-bit image inside the budget that fools
    the deployment, and HSJ fools at least as many samples after rounding as the same search does in float."""
    from robustdeploy.evaluation.grid import OnGrid, realise

    x, y = digits.test.x[:24], digits.test.y[:24]
    runs = {}
    for mode in ("float", "grid"):
        attack = ATTACKS.create("hopskipjump", norm=norm, max_queries=400)
        if mode == "grid":
            attack.realiser, attack.quantum = (lambda a, xb, e: realise(a, xb, e, norm)), 1 / 255
        runs[mode] = attack.perturb(OnGrid(ort.logits) if mode == "grid" else ort.logits, x, y, eps)
    fooled_in_float = int((ort.predict(runs["float"]) != y).sum())
    adv = runs["grid"]
    assert torch.equal(adv, realise(adv, x, eps, norm))  # the example kept is what the deployment receives
    claimed = (adv != x).flatten(1).any(1)
    assert (ort.predict(adv)[claimed] != y[claimed]).all()  # every claimed success fools after rounding
    assert int((ort.predict(adv) != y).sum()) >= fooled_in_float - 1 > int((ort.predict(x) != y).sum())


def test_square_l2_keeps_only_what_the_deployment_scored(bundle_dir, tmp_path):
    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), attacks=("square",), epsilons=(1.0,),
                                 limit=30, attack_params={"max_queries": 100, "norm": "l2"}, out=tmp_path / "r.json"))
    (mine,) = result.sets
    assert mine["rounding"]["stopped_fooling"] == 0 and mine["rounding"]["fooled_after"] > 0


def test_a_weak_query_based_attack_is_flagged_next_to_its_number(bundle_dir, tmp_path):
    """HopSkipJump starved of queries, then PGD on the samples it left robust: the check fails and the table marks
    the HSJ row; a black-box-only result says its number is an upper bound."""
    from robustdeploy.report import evaluation_table

    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), attacks=("hopskipjump", "pgd"),
                                 epsilons=(0.2,), limit=40, attack_params={"max_queries": 20}, out=tmp_path / "r.json"))
    check = next(c for c in result.checks if c["name"] == "blackbox_far_above_whitebox")
    assert not check["passed"] and "ort-cpu eps=0.2 hopskipjump" in check["detail"]
    assert "hopskipjump (!)" in evaluation_table(result) and "pgd (!)" not in evaluation_table(result)
    alone = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), attacks=("hopskipjump",), epsilons=(0.2,),
                                limit=10, attack_params={"max_queries": 20}, out=tmp_path / "h.json"))
    assert "upper bound" in evaluation_table(alone) and "upper bound" not in evaluation_table(result)
    assert alone.sets[0]["iterations_mean"] is not None  # HSJ's iterations are stated with its queries
