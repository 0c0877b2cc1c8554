"""`diff`: differential searches between the PyTorch graph and a deployment, on the digits CNN's variants."""

import copy
import re

import pytest
import torch

import robustdeploy.attacks.differential as differential
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.plans.diff import DiffConfig, run_diff
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.runtimes import create_runtime
from robustdeploy.verdict import verdicts
from tests.conftest import assert_one_line_error, cli


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, above all on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_searches_find_a_shifted_boundary_within_the_budget():
    """Two linear models whose class-0 bias differs: both searches find inputs between their boundaries."""
    from robustdeploy.attacks import SEARCHES
    from robustdeploy.evaluation.grid import realise

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).requires_grad_(False)
    deployment = copy.deepcopy(reference)
    deployment[1].bias[0] += 0.3
    x = torch.round(torch.rand(40, 1, 4, 4) * 255) / 255
    for name in ("gradient", "genetic"):
        for model, some in ((deployment, True), (reference, False)):
            out = SEARCHES.create(name).search(reference, model, x, 0.1, 12, lambda a, z, e: realise(a, z, e, "linf"))
            split = reference(out.adv).argmax(1) != model(out.adv).argmax(1)
            assert torch.equal(split, out.found) and bool(split.any()) == some, name
            assert int(out.queries.max()) <= 12 and torch.equal(torch.round(out.adv * 255) / 255, out.adv)
            assert ((out.adv - x).abs().max() * 255).round() <= 25


def split_on_stored(bundle_dir, result, stored, key):
    """Samples on which freshly opened runtimes disagree on the stored example `key`."""
    bundle = load_bundle(bundle_dir)
    reference = create_runtime(bundle, result.extra["reference"]).predict(stored[key])
    return set((create_runtime(bundle, result.extra["against"][0]).predict(stored[key]) != reference)
               .nonzero().flatten().tolist())


def test_search_finds_int8_disagreements_the_test_split_does_not_show(variant_bundle_dir, tmp_path):
    from robustdeploy.evaluation.results import load_result

    out = tmp_path / "d.json"
    result = run_diff(DiffConfig(variant_bundle_dir, against=("ort-cpu:int8",), epsilons=(0.1,), budget=8, limit=60,
                                 out=out))
    assert [c["search"] for c in result.cells] == ["gradient", "genetic"]
    gradient, last = result.cells
    assert gradient["found_beyond_clean"] > 0 and last["disagreement"] > last["clean_disagreement"]
    _, stored = load_result(out)
    union = set()
    for s in result.sets:
        union |= split_on_stored(variant_bundle_dir, result, stored, s["key"])
        adv, x = stored[s["key"]], stored["x"]
        assert torch.equal(torch.round(adv * 255) / 255, adv)  # 8-bit
        assert ((adv - x).abs().max() * 255).round() <= 25  # floor(0.1 * 255) grid steps
        assert s["queries_mean"] <= 8
    assert set(last["disagreeing"]) == union  # every reported split holds on freshly opened runtimes
    assert {c["name"]: c["passed"] for c in result.checks}["disagreement_confirmed"]
    assert rescore(out) == result.cells
    assert (tmp_path / result.figure).stat().st_size > 0
    (int8,), = verdicts([(out, result)]).values()  # the report's answer: the int8 deployment differs from torch
    assert int8.headline() == "differs from torch"
    assert int8.differing == {"d.json": max(c["found_beyond_clean"] for c in result.cells)}


def test_no_disagreement_with_ort_fp32_at_a_tolerance_sized_eps(variant_bundle_dir, tmp_path):
    result = run_diff(DiffConfig(variant_bundle_dir, against=("ort-cpu",), epsilons=(1 / 255, 0.01), budget=6,
                                 limit=60, out=tmp_path / "d.json"))
    assert len(result.cells) == 4 and all(c["disagreement"] == 0.0 for c in result.cells)
    assert result.figure is None


def test_a_search_claim_is_never_reported_unless_re_scoring_confirms_it(variant_bundle_dir, tmp_path, monkeypatch):
    """A deployment that answers the search differently from how it scores (a flaky or stateful runtime)."""
    real = differential.ask

    def lying(deployment, z, index, out):
        logits = real(deployment, z, index, out)
        logits[:, 0] += 100.0
        return logits

    monkeypatch.setattr(differential, "ask", lying)
    result = run_diff(DiffConfig(variant_bundle_dir, against=("ort-cpu",), epsilons=(0.05,), searches=("gradient",),
                                 budget=3, limit=30, out=tmp_path / "d.json"))
    claimed = result.extra["claimed"]["gradient/ort-cpu/eps=0.05"]
    assert len(claimed) > 0 and result.cells[0]["disagreement"] == 0.0
    check = {c["name"]: c for c in result.checks}["disagreement_confirmed"]
    assert not check["passed"] and "not confirmed on re-scoring" in check["detail"]


def test_query_only_search_with_an_onnx_reference(variant_bundle_dir, tmp_path):
    result = run_diff(DiffConfig(variant_bundle_dir, reference="ort-cpu", against=("ort-cpu:fp16",), epsilons=(0.1,),
                                 budget=5, limit=30, out=tmp_path / "d.json"))
    assert [a["name"] for a in result.attacks] == ["genetic"]
    assert result.sets[0]["queries_mean"] == 5.0 and result.cells[0]["reference"] == "ort-cpu"
    with pytest.raises(RobustDeployError, match="needs the reference's gradients"):
        run_diff(DiffConfig(variant_bundle_dir, reference="ort-cpu", against=("ort-cpu:int8",), searches=("gradient",),
                            limit=10, out=tmp_path / "e.json"))


@pytest.mark.parametrize("args, needle", [
    (["--against", "ort-cpx:int8"], "unknown runtime 'ort-cpx'"),
    (["--against", "ort-cpu:int4"], "no 'int4' variant"),
    (["--eps", "0"], "outside (0, 1]"),
    (["--budget", "0"], "query budget must be at least 1"),
])
def test_bad_inputs_are_one_line_errors(variant_bundle_dir, tmp_path, args, needle):
    out = tmp_path / "d.json"
    proc = cli("diff", variant_bundle_dir, "--out", out, *args)
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)
    assert not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize("options, needle", [
    ({"epsilons": (1.5,)}, "outside (0, 1]"),
    ({"searches": ("gradiant",)}, "did you mean 'gradient'"),
    ({"against": ("torch",)}, "is the reference itself"),
    ({"against": ()}, "at least one --against"),
    ({"searches": ("genetic", "genetic")}, "listed twice"),
])
def test_bad_options_are_refused_before_any_work(variant_bundle_dir, tmp_path, options, needle):
    with pytest.raises(RobustDeployError, match=re.escape(needle)):
        run_diff(DiffConfig(variant_bundle_dir, out=tmp_path / "d.json", **options))
    assert not list(tmp_path.iterdir())


def test_gate_fails_a_deployment_that_splits_from_torch_within_the_ball(variant_bundle_dir, tmp_path):
    import xml.etree.ElementTree as ET

    from robustdeploy.attacks import AttackSpec
    from robustdeploy.evaluation.plans.gate import CheckConfig, run_check
    from robustdeploy.evaluation.results import load_result

    result, found = run_check(CheckConfig(variant_bundle_dir, runtimes=("ort-cpu:int8",), attacks=(AttackSpec("fgsm"),),
                                          limit=60, diff_eps=0.1, diff_budget=8, max_disagreement=0.0,
                                          max_accuracy_drop=100, min_agreement=0, out=tmp_path / "c.json",
                                          markdown=tmp_path / "s.md", junit=tmp_path / "j.xml"))
    differ = next(i for i in found if i.check == "disagreement eps=0.1")
    assert not differ.passed and differ.measured > 0 and not result.extra["passed"]
    failures = ET.parse(tmp_path / "j.xml").getroot().findall("testcase/failure")
    assert any("split from torch within eps=0.1" in f.get("message") for f in failures)
    assert "| ort-cpu:int8 | disagreement eps=0.1 |" in (tmp_path / "s.md").read_text()
    assert result.extra["diff_result"] == "c.diff.json"
    assert rescore(tmp_path / "c.diff.json") == load_result(tmp_path / "c.diff.json")[0].cells
