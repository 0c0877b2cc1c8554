import json

import pytest

from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluate import EvalConfig, evaluate, rescore
from robustdeploy.runtimes import create_runtime


def test_evaluate_side_by_side_and_rescorable(bundle_dir, tmp_path):
    out = tmp_path / "r.json"
    result = evaluate(EvalConfig(bundle=bundle_dir, epsilons=(0.05, 0.15), limit=120, out=out))
    assert result.complete and result.samples == 120
    robust = [result.score(e, "ort-cpu").robust_accuracy for e in (0.05, 0.15)]
    clean = result.score(0.05, "ort-cpu").clean_accuracy
    assert clean > 85 and robust[1] < robust[0] <= clean  # larger budget, lower accuracy
    for eps in (0.05, 0.15):
        t, o = result.score(eps, "torch"), result.score(eps, "ort-cpu")
        assert t.robust_accuracy == pytest.approx(o.robust_accuracy, abs=1.0)
        assert len(o.adversarial_differs_from_torch) <= 1
    saved = json.loads(out.read_text())
    assert saved["seed"] == 0 and saved["versions"]["onnxruntime"] and saved["budgets"][0]["attack_seconds"] > 0
    ort = create_runtime(load_bundle(bundle_dir), "ort-cpu")
    assert rescore(out, ort) == {e: result.score(e, "ort-cpu").robust_accuracy for e in (0.05, 0.15)}


def test_resume_keeps_finished_budgets(bundle_dir, tmp_path):
    out = tmp_path / "r.json"
    first = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), epsilons=(0.1,), limit=60, out=out))
    resumed = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("ort-cpu",), epsilons=(0.1, 0.2), limit=60,
                                  out=out, resume=True))
    assert [b.eps for b in resumed.budgets] == [0.1, 0.2]
    assert resumed.budgets[0] == first.budgets[0]
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
    ({"epsilons": (1.5,)}, "outside"), ({"epsilons": (-0.1,)}, "outside"), ({"attack": "pgdd"}, "did you mean"),
    ({"runtimes": ()}, "at least one --runtime"), ({"limit": 0}, "--limit"),
    ({"runtimes": ("ort-cpu", "ort-cpu")}, "twice"),
])
def test_bad_evaluation_settings(bundle_dir, tmp_path, kwargs, message):
    out = tmp_path / "r.json"
    with pytest.raises(RobustDeployError, match=message):
        evaluate(EvalConfig(bundle=bundle_dir, out=out, **kwargs))
    assert not out.exists()
