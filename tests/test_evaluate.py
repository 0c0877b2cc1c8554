"""The evaluation core on real digits: 8-bit realisation, the cascade, resume, rescore, bad settings."""

import json

import pytest
import torch
from safetensors.torch import load_file

from robustdeploy.attacks import ATTACKS
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.grid import realise
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.evaluation.score import percent
from robustdeploy.runtimes import create_runtime


def on_grid(t: torch.Tensor) -> bool:
    return torch.equal(t, torch.round(t * 255) / 255)


def test_evaluate_side_by_side_on_the_grid_and_rescorable(bundle_dir, tmp_path):
    out = tmp_path / "r.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, epsilons=(0.05, 0.15), limit=120, out=out))
    assert result.complete and result.samples == 120 and result.kind == "evaluate"
    robust = [result.cell("ort-cpu", e)["robust_accuracy"] for e in (0.05, 0.15)]
    clean = result.cell("ort-cpu", 0.05)["clean_accuracy"]
    assert clean > 85 and robust[1] < robust[0] <= clean
    for eps in (0.05, 0.15):
        t, o = result.cell("torch", eps), result.cell("ort-cpu", eps)
        assert t["robust_accuracy"] == pytest.approx(o["robust_accuracy"], abs=1.0)
        assert len(o["outcome_differs_from_torch"]) <= 1
    saved = json.loads(out.read_text())
    assert saved["format"] == "robustdeploy-result/2" and saved["seed"] == 0 and saved["versions"]["onnxruntime"]
    stored = load_file(str(tmp_path / result.adversarial_file))
    for s in result.sets:  # every stored example is what an 8-bit deployment receives, inside the budget
        adv = stored[s["key"]]
        assert on_grid(adv) and (adv - stored["x"]).abs().max() <= s["eps"] + 1e-6
    assert rescore(out) == result.cells


def test_realised_robust_accuracy_is_no_higher_than_fixed_step_pgd_then_rounding(bundle_dir, tmp_path, digits):
    """Success is judged on the rounded iterate, so stopping early can only help the attacker."""
    x, y = digits.test.x, digits.test.y
    model = load_bundle(bundle_dir).reference_model().requires_grad_(False)
    ort = create_runtime(load_bundle(bundle_dir), "ort-cpu")
    size = EvalConfig(bundle=bundle_dir).batch_size
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    for eps in (0.05, 0.1, 0.2):
        result = evaluate(EvalConfig(bundle=bundle_dir, epsilons=(eps,), out=tmp_path / f"{eps}.json"))
        plain, attack = x.clone(), ATTACKS.create("pgd", early_stop=False, seed=0)
        for start in range(0, len(x), size):  # the same blocks, samples and starts as the evaluation's
            block = torch.arange(start, min(start + size, len(x)))[correct[start : start + size]]
            plain[block] = attack.perturb(model, x[block], y[block], eps)
        rounded = realise(plain, x, eps, "linf")
        for runtime, predict in (("torch", lambda z: model(z).argmax(1)), ("ort-cpu", ort.predict)):
            with torch.no_grad():
                baseline = percent(predict(rounded) == y)
            assert result.cell(runtime, eps)["robust_accuracy"] <= baseline + 1e-9, (eps, runtime)


def test_realise_stays_on_grid_inside_the_budget(digits):
    x = digits.test.x[:64]
    generator = torch.Generator().manual_seed(0)
    for norm, eps in (("linf", 0.1), ("l2", 0.7)):
        noise = torch.randn(x.shape, generator=generator)
        if norm == "linf":
            adv = (x + noise.clamp(-1, 1) * eps).clamp(0, 1)
        else:
            adv = (x + eps * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
        real = realise(adv, x, eps, norm)
        size = (real - x).flatten(1).abs().amax(1) if norm == "linf" else (real - x).flatten(1).norm(dim=1)
        assert on_grid(real) and (size <= eps + 1e-6).all()
        assert (real - adv).abs().max() <= 1.0 / 255 + 1e-6  # at most one grid step from the float example
    assert torch.equal(realise(x + 0.3 / 255, x, 0.1, "linf"), x)


def test_cascade_reports_each_attack_and_the_worst_case(bundle_dir, tmp_path):
    out = tmp_path / "c.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), attacks=("fgsm", "pgd", "square"),
                                 epsilons=(0.1,), limit=60, attack_params={"max_queries": 100}, out=out))
    cells = [c for c in result.cells if c["runtime"] == "ort-cpu"]
    assert [c["attack"] for c in cells] == ["fgsm", "pgd", "square"]
    robust = [c["robust_accuracy"] for c in cells]
    assert robust[0] >= robust[1] >= robust[2]  # each attack only adds fooled samples
    sets = {s["attack"]: s for s in result.sets}
    assert sets["fgsm"]["source"] == "torch" and sets["square"]["source"] == "ort-cpu"  # capabilities matched
    assert sets["pgd"]["attacked"] <= sets["fgsm"]["attacked"]  # only the samples still robust are attacked
    assert sets["square"]["queries_mean"] <= 100
    assert rescore(out) == result.cells


def test_minimal_norm_attack_is_clipped_per_budget_with_realised_norms(bundle_dir, tmp_path):
    out = tmp_path / "ddn.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, attacks=("ddn",), attack_params={"steps": 20},
                                 epsilons=(0.5, 1.0, 5.0), limit=40, out=out))
    norms = result.extra["norms"]["ddn/torch"]
    stored = load_file(str(tmp_path / result.adversarial_file))
    found = stored["ddn/torch/minimal"]
    assert on_grid(found)
    fooled = [i for i, n in enumerate(norms) if n not in (None, 0.0)]
    realised = (found - stored["x"]).flatten(1).norm(dim=1)
    assert all(abs(realised[i].item() - norms[i]) < 1e-5 for i in fooled)  # the norm of the rounded example
    robust = [result.cell("torch", e)["robust_accuracy"] for e in (0.5, 1.0, 5.0)]
    assert robust[0] >= robust[1] >= robust[2]
    counted = 100.0 * sum(n is None or n > 1.0 for n in norms) / len(norms)
    assert result.cell("torch", 1.0)["robust_accuracy"] == pytest.approx(counted)
    assert rescore(out) == result.cells


def test_windows_give_the_numbers_and_examples_of_one_pass(bundle_dir, tmp_path):
    """A split larger than --window goes through disk window by window, with exactly the one-pass result."""
    from robustdeploy.evaluation.results import load_result

    settings = dict(bundle=bundle_dir, attacks=("pgd", "square"), epsilons=(0.1,), limit=70, batch_size=16,
                    attack_params={"steps": 5, "max_queries": 20})
    one = evaluate(EvalConfig(**settings, out=tmp_path / "one.json"))
    windowed = evaluate(EvalConfig(**settings, window=20, out=tmp_path / "w.json"))  # 32-sample windows
    assert windowed.cells == one.cells and windowed.complete
    assert [(s["key"], s["attacked"]) for s in windowed.sets] == [(s["key"], s["attacked"]) for s in one.sets]
    a, b = load_result(tmp_path / "one.json")[1], load_result(tmp_path / "w.json")[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert rescore(tmp_path / "w.json") == windowed.cells
    assert not (tmp_path / "w.shards").exists() and (tmp_path / "w.png").is_file()
    with pytest.raises(RobustDeployError, match="give --eps"):
        evaluate(EvalConfig(bundle=bundle_dir, attacks=("ddn",), epsilons=(), limit=70, batch_size=16, window=20,
                            out=tmp_path / "m.json"))


def test_a_finished_window_is_reused_on_resume(bundle_dir, tmp_path, monkeypatch, caplog):
    """Interrupted after its first window finished, a windowed run resumes with that window (matched against the
    run's settings, not refused as other settings) and gives the uninterrupted result."""
    from robustdeploy.evaluation import shards

    settings = dict(bundle=bundle_dir, epsilons=(0.1,), limit=64, batch_size=16, window=32,
                    attack_params={"steps": 5})
    one = evaluate(EvalConfig(**settings, out=tmp_path / "one.json"))

    def interrupt() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "release_memory", interrupt)  # called once the first window is finished
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalConfig(**settings, out=tmp_path / "w.json"))
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="robustdeploy"):
        resumed = evaluate(EvalConfig(**settings, out=tmp_path / "w.json", resume=True))
    assert "already finished" in caplog.text
    assert resumed.cells == one.cells and resumed.complete


def test_resume_keeps_finished_sets(bundle_dir, tmp_path):
    out = tmp_path / "r.json"
    first = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), epsilons=(0.1,), limit=60, out=out))
    before = load_file(str(tmp_path / first.adversarial_file))["pgd/torch/eps=0.1"]
    resumed = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), epsilons=(0.1, 0.2), limit=60,
                                  out=out, resume=True))
    assert resumed.epsilons == [0.1, 0.2] and resumed.cell("ort-cpu", 0.1) == first.cell("ort-cpu", 0.1)
    assert torch.equal(load_file(str(tmp_path / resumed.adversarial_file))["pgd/torch/eps=0.1"], before)
    assert next(s for s in resumed.sets if s["eps"] == 0.1)["seconds"] == first.sets[0]["seconds"]
    with pytest.raises(RobustDeployError, match="other settings"):
        evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), epsilons=(0.1,), limit=30, out=out,
                            resume=True))


def test_input_shape_mismatch_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["data"]["image_size"] = 16
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RobustDeployError, match="expects \\(1, 8, 8\\)"):
        evaluate(EvalConfig(bundle=bundle_copy, runtimes=("ort-cpu",), limit=10))


@pytest.mark.parametrize("kwargs,message", [
    ({"epsilons": (1.5,)}, "outside"), ({"epsilons": (-0.1,)}, "outside"), ({"attacks": ("pgdd",)}, "did you mean"),
    ({"runtimes": ()}, "at least one --runtime"), ({"limit": 0}, "--limit"), ({"batch_size": 0}, "--batch-size"),
    ({"runtimes": ("ort-cpu", "ort-cpu")}, "twice"), ({"attacks": ("pgd", "pgd")}, "twice"),
    ({"attack_params": {"steps": "many"}}, "takes an integer"), ({"attack_params": {"gamma": 0.1}}, "takes gamma"),
    ({"attacks": ("ddn", "pgd"), "attack_params": {"norm": "linf"}}, "supports l2"),
    ({"data_root": "/tmp"}, "built-in"), ({"device": "tpu"}, "--device"),
])
def test_bad_evaluation_settings(bundle_dir, tmp_path, kwargs, message):
    out = tmp_path / "r.json"
    with pytest.raises(RobustDeployError, match=message):
        evaluate(EvalConfig(bundle=bundle_dir, out=out, **kwargs))
    assert not out.exists()


def test_output_paths_are_checked_before_any_work(bundle_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "r.json", "is a file")):
        with pytest.raises(RobustDeployError, match=message):
            evaluate(EvalConfig(bundle=bundle_dir, out=out, limit=5))


def test_a_budget_of_zero_and_an_all_wrong_split_still_give_a_result(bundle_dir, tmp_path):
    result = evaluate(EvalConfig(bundle=bundle_dir, epsilons=(0.0,), limit=20, out=tmp_path / "z.json"))
    assert result.cell("torch", 0.0)["robust_accuracy"] == result.cell("torch", 0.0)["clean_accuracy"]
    assert result.figure is not None
