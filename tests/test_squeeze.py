"""Feature-squeezing detector: squeezer semantics, exported graph vs PyTorch, calibration, adaptive attack, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli

from robustdeploy.bundle import load_bundle
from robustdeploy.defenses.detector_bundle import open_detector, reference_detector
from robustdeploy.defenses.squeeze import BitDepth, MedianFilter, Resample, SqueezeConfig
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack, DetectorView
from robustdeploy.evaluation.grid import OnGrid, realise
from robustdeploy.evaluation.plans.detector import adaptive_cache, evaluate_detector, roc_auc
from robustdeploy.evaluation.plans.evaluate import EvalConfig
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.evaluation.session import open_session
from robustdeploy.export import ExportConfig, export_bundle

SCORE_ATOL = 1e-4  # exported score vs PyTorch, both fp32
ADAPTIVE = "adaptive:squeeze-adaptive"


def bpda_ensemble(detector, x, y, eps, steps=200):
    """The reference of issue 14: L-inf PGD pushing x and each squeezed view toward one target class (the most
    likely wrong one) in logit space, straight-through gradients; each iterate judged 8-bit realised by the
    exact detector, the first that fools undetected kept."""
    view = OnGrid(DetectorView(detector))
    with torch.no_grad():
        target = detector(x)[0].scatter(1, y[:, None], float("-inf")).argmax(1)
    adv, best = x.clone(), x.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        adv.requires_grad_(True)
        logits, squeezed = view(adv)
        views = torch.cat([logits[:, None], squeezed], 1)
        chosen = views.gather(2, target.view(-1, 1, 1).expand(-1, views.shape[1], 1)).squeeze(2)
        others = views.masked_fill(torch.nn.functional.one_hot(target, views.shape[2]).bool()[:, None], -1e9)
        grad, = torch.autograd.grad((others.amax(2) - chosen).sum(), adv)
        adv = (x + (adv.detach() - 2.5 * eps / steps * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        with torch.no_grad():
            out, _, flag = detector(realise(adv, x, eps, "linf"))
        new = (out.argmax(1) != y) & ~flag & ~found
        best[new], found = adv[new], found | new
    best[~found] = adv[~found]
    return best


@pytest.fixture(scope="module")
def all_squeezers_bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("squeeze") / "all"
    export_bundle(ExportConfig(run_dir=run_dir, out=out, detector="squeeze",
                               squeeze=SqueezeConfig(bits=4, median=2, resample=2)))
    return out


@pytest.fixture(scope="module")
def bits_bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("squeeze") / "bits"
    export_bundle(ExportConfig(run_dir=run_dir, out=out, detector="squeeze", squeeze=SqueezeConfig(bits=4, median=0)))
    return out


def test_median_matches_scipy_median_filter_of_xu_et_al(digits):
    from scipy import ndimage

    x = digits.test.x[:20]
    for k in (2, 3):
        expected = ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
        assert np.array_equal(MedianFilter(k)(x).numpy(), expected)


def test_bit_depth_and_resample_values(digits):
    x = digits.test.x[:20]
    assert BitDepth(1)(x).unique().tolist() in ([0.0, 1.0], [0.0], [1.0])
    assert torch.equal(BitDepth(8)(x), x)  # the data is already on the 8-bit grid
    up = Resample(2)(x)
    assert torch.allclose(up[:, :, ::2, ::2], torch.nn.functional.avg_pool2d(x, 2))
    assert torch.equal(up[:, :, 1::2, 1::2], up[:, :, ::2, ::2])


def test_onnx_round_is_half_to_even_like_torch():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Round", ["x"], ["y"])], "round",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ties = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    assert session.run(None, {"x": ties.numpy()})[0].tolist() == torch.round(ties).tolist()
    assert torch.round(ties).tolist() == [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0]


def test_exported_detector_matches_pytorch(all_squeezers_bundle, digits):
    bundle = load_bundle(all_squeezers_bundle)
    section = bundle.manifest["detector"]
    assert section["file"] in bundle.manifest["files"]
    assert [s["squeezer"] for s in section["squeezers"]] == ["BitDepth", "MedianFilter", "Resample"]
    assert section["parity"]["passed"] and section["parity"]["score_max_abs"] <= SCORE_ATOL
    x = torch.cat([digits.test.x, digits.val.x])
    t_logits, t_score, t_flag = open_detector(bundle, "torch").run(x)
    o_logits, o_score, o_flag = open_detector(bundle, "ort-cpu").run(x)
    assert (o_score - t_score).abs().max() <= SCORE_ATOL
    assert float((o_flag == t_flag).float().mean()) >= 0.99
    assert torch.equal(o_logits.argmax(1), t_logits.argmax(1))
    assert float(t_score.min()) >= 0.0 and float(t_score.max()) <= 2.0


def test_calibration_gives_about_the_target_fpr_on_held_out_clean_data(bits_bundle, digits):
    bundle = load_bundle(bits_bundle)
    section = bundle.manifest["detector"]
    assert section["target_fpr"] == 0.05 and section["calibration"]["fpr"] <= 0.05
    _, _, flag = open_detector(bundle, "ort-cpu").run(digits.test.x)
    assert 0.0 < float(flag.float().mean()) <= 0.10  # 270 held-out test images, target 5%


def test_roc_auc():
    assert roc_auc(torch.tensor([0.0, 0.1]), torch.tensor([0.2, 0.3])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0.5])) == 0.5


def test_adaptive_attack_lowers_detection(bits_bundle, tmp_path):
    config = EvalConfig(bundle=bits_bundle, epsilons=(0.1,), limit=60, out=tmp_path / "r.json",
                        attack_params={"steps": 10})
    result = evaluate_detector(config, AdaptiveSqueezeAttack(steps=30, targets=2, restarts=1))
    assert rescore(tmp_path / "r.json") == result.cells
    rows = {(c["runtime"], c["attack"]): c for c in result.cells}
    for runtime in ("torch", "ort-cpu"):
        oblivious, adaptive = rows[(runtime, "oblivious:pgd")], rows[(runtime, ADAPTIVE)]
        assert oblivious["successful_adversarials"] > 5 and adaptive["successful_adversarials"] > 5
        assert adaptive["detection_rate"] < oblivious["detection_rate"] - 10  # on 8-bit images, as deployed
        assert adaptive["undetected_success_rate"] > oblivious["undetected_success_rate"]
    assert rows[("ort-cpu", ADAPTIVE)]["score_diff_vs_torch"]["max"] <= SCORE_ATOL
    for runtime in ("torch", "ort-cpu"):  # the worst case takes, per sample, the attacker's best example
        worst = rows[(runtime, "worst case")]["undetected_success_rate"]
        assert worst >= max(rows[(runtime, a)]["undetected_success_rate"] for a in ("oblivious:pgd", ADAPTIVE))


def test_adaptive_attack_beats_a_bpda_ensemble_and_is_crafted_once_per_budget(bits_bundle, digits, tmp_path):
    eps, limit = 0.1, 40
    config = EvalConfig(bundle=bits_bundle, epsilons=(eps,), limit=limit, out=tmp_path / "pgd.json",
                        attack_params={"steps": 5})
    result = evaluate_detector(config, AdaptiveSqueezeAttack())
    detector = reference_detector(load_bundle(bits_bundle)).eval().requires_grad_(False)
    x, y = digits.test.x[:limit], digits.test.y[:limit]
    adv = realise(bpda_ensemble(detector, x, y, eps), x, eps, "linf")
    with torch.no_grad():
        correct = detector(x)[0].argmax(1) == y
        logits, _, flag = detector(adv)
    reference = 100.0 * float((correct & (logits.argmax(1) != y) & ~flag).sum() / correct.sum())
    new = result.cell("torch", eps, ADAPTIVE)["undetected_success_rate"]
    assert reference > 0 and new >= reference, (new, reference)

    again = evaluate_detector(replace(config, attacks=("fgsm",), out=tmp_path / "fgsm.json"), AdaptiveSqueezeAttack())
    assert result.extra["adaptive_reused"] == [] and again.extra["adaptive_reused"] == [eps]
    assert again.cell("ort-cpu", eps, ADAPTIVE) == result.cell("ort-cpu", eps, ADAPTIVE)
    assert rescore(tmp_path / "fgsm.json") == again.cells
    assert rescore(tmp_path / again.extra["adaptive_cache"])  # the cache re-scores on its own


def test_adaptive_attack_drives_apgd_on_the_evasion_objective(bits_bundle, tmp_path):
    """APGD as the inner optimiser: it optimises evasion, not its own CE (far above the oblivious PGD), its sets are
    stored and re-score, and they are cached under a key of their own. (At eps 0.1 on digits APGD's large,
    corner-seeking steps find fewer 8-bit evasions than PGD's small ones: see README, feature squeezing.)"""
    eps = 0.2
    config = EvalConfig(bundle=bits_bundle, epsilons=(eps,), limit=40, out=tmp_path / "apgd.json")
    result = evaluate_detector(config, AdaptiveSqueezeAttack(inner="apgd", steps=50, targets=2, restarts=1))
    used, session = AdaptiveSqueezeAttack(**result.extra["adaptive_attack"]), open_session(config)
    assert used.inner == "apgd" and adaptive_cache(tmp_path, session, used, True).name == result.extra["adaptive_cache"]
    assert adaptive_cache(tmp_path, session, replace(used, inner="pgd"), True).name != result.extra["adaptive_cache"]
    for runtime in ("torch", "ort-cpu"):
        adaptive = result.cell(runtime, eps, ADAPTIVE)["undetected_success_rate"]
        assert adaptive > result.cell(runtime, eps, "oblivious:pgd")["undetected_success_rate"] + 30
    assert rescore(tmp_path / "apgd.json") == result.cells


@pytest.mark.parametrize("attack,opts", [("ddn", ["--attack-opt", "steps=10", "--eps", "1.0"]),
                                         ("square", ["--attack-opt", "max_queries=50"])])
def test_detector_works_with_every_attack_family(bits_bundle, tmp_path, attack, opts):
    out = tmp_path / "d.json"
    proc = cli("evaluate", bits_bundle, "--detector", "--attack", attack, *opts, "--limit", "30",
               "--adaptive-steps", "5", "--adaptive-targets", "1", "--adaptive-restarts", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    cells = json.loads(out.read_text())["cells"]
    assert {c["attack"] for c in cells} == {f"oblivious:{attack}", ADAPTIVE, "worst case"}
    assert rescore(out) == cells
    oblivious = "score-based on torch, score-based on ort-cpu" if attack == "square" else "white-box on torch"
    assert f"threat models: oblivious: {oblivious}; adaptive: white-box on torch" in proc.stdout


def test_cli_detector_errors(run_dir, bundle_dir, tmp_path):
    assert_one_line_error(cli("evaluate", bundle_dir, "--detector", "--limit", "5"), "has no detector")
    assert_one_line_error(cli("evaluate", bundle_dir, "--detector", "--adaptive-inner", "square"),
                          "inner optimiser must be a fixed-budget gradient attack (apgd, fgsm, pgd)")
    assert_one_line_error(cli("evaluate", bundle_dir, "--detector", "--adaptive-inner", "pgdd"), "did you mean 'pgd'")
    assert_one_line_error(cli("export", run_dir, "--out", tmp_path / "b", "--detector", "squeeze",
                              "--target-fpr", "1.5"), "--target-fpr")
    assert_one_line_error(cli("export", run_dir, "--out", tmp_path / "b", "--detector", "squeez"),
                          "did you mean 'squeeze'")
    assert not (tmp_path / "b").exists()
