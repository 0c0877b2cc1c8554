"""Attacking the deployment itself (issue 19): variant twins, deployment-in-the-loop crafting, threat labels, and the
worst case over every stored example (issue 27 item 4)."""

from __future__ import annotations

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.score import score_cascade
from robustdeploy.runtimes import create_runtime
from robustdeploy.twins import FakeQuant, make_twin

FAST = {"steps": 5}


def test_twins_follow_their_variants(variant_bundle_dir, digits):
    """The int8 twin computes what ONNX Runtime's int8 session computes; the fp16 twin agrees on top-1; both give
    input gradients."""
    bundle = load_bundle(variant_bundle_dir)
    x = digits.test.x[:64]
    for variant, tolerance in (("int8", 1e-3), ("fp16", 0.05)):
        twin = make_twin(bundle, variant, bundle.reference_model())
        deployed = create_runtime(bundle, f"ort-cpu:{variant}").logits(x)
        z = x.clone().requires_grad_(True)
        logits = twin.model(z)
        assert (logits - deployed).abs().max() < tolerance, variant
        assert (logits.argmax(1) == deployed.argmax(1)).all()
        grad, = torch.autograd.grad(logits.max(1).values.sum(), z)
        assert grad.abs().sum() > 0


def test_fake_quant_gradient_stops_where_the_quantiser_saturates():
    """A uint8 quantiser with zero point 0 is the ReLU a QDQ graph fused into it: no gradient on its dead side (nor
    above the range), the identity inside."""
    quant = FakeQuant(torch.tensor(0.1), torch.tensor(0, dtype=torch.uint8), 0, 255)
    x = torch.tensor([-1.0, -0.04, 0.0, 0.5, 25.4, 30.0], requires_grad=True)
    out = quant(x)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.0, 0.5, 25.4, 25.5]))
    grad, = torch.autograd.grad(out.sum(), x)
    assert grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # -0.04 rounds to level 0: inside the range


def test_int8_twin_gradients_follow_the_reference(variant_bundle_dir, digits):
    """The fake-quant twin's input gradient points where the fp32 graph's does (its forward pass is the int8
    session's): a gradient leaking through fused ReLUs would not."""
    bundle = load_bundle(variant_bundle_dir)
    x, y = digits.test.x[:64], digits.test.y[:64]

    def gradient(model):
        z = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(z), y, reduction="sum"), z)
        return grad.flatten(1)

    reference = bundle.reference_model().eval()
    cosine = torch.nn.functional.cosine_similarity(gradient(make_twin(bundle, "int8", reference).model),
                                                   gradient(reference))
    assert cosine.median() > 0.98  # 0.96 with the gradient leaking through fused ReLUs (0.64 on MNIST)


def _run(bundle, tmp_path, loop: str, name: str):
    return evaluate(EvalConfig(bundle=bundle, runtimes=("torch", "ort-cpu:int8"), attacks=("pgd",), epsilons=(0.1,),
                               attack_params=FAST, limit=32, out=tmp_path / f"{name}.json", deployment_loop=loop))


def test_int8_gets_the_lower_of_transfer_and_deployment_in_the_loop(variant_bundle_dir, tmp_path):
    """The in-the-loop set is crafted on the int8 runtime, labelled, and the int8 cell is no higher than either the
    transferred set or the in-the-loop set alone; plain transfer by name is labelled and warned about."""
    plain = _run(variant_bundle_dir, tmp_path, "off", "off")
    loop = _run(variant_bundle_dir, tmp_path, "auto", "auto")
    sets = {s["key"]: s for s in loop.sets}
    own = sets["pgd/ort-cpu:int8/eps=0.1"]
    assert own["threat"] == "deployment-in-the-loop on ort-cpu:int8" and own["twin"]["agreement"] == 100.0
    assert sets["pgd/torch/eps=0.1"]["threat"] == "white-box on torch"
    cell, transfer = loop.cell("ort-cpu:int8", 0.1), plain.cell("ort-cpu:int8", 0.1)
    assert cell["robust_accuracy"] <= min(transfer["robust_accuracy"], cell["own_robust_accuracy"])
    assert "deployment-in-the-loop on ort-cpu:int8" in cell["threat"]
    assert transfer["threat"] == "transfer from torch"
    failed = {c["name"] for c in plain.checks if not c["passed"]}
    assert "transfer_only" in failed and "transfer_only" not in {c["name"] for c in loop.checks if not c["passed"]}


def test_fp32_deployment_attacked_through_torch_is_not_transfer_only():
    """The fp32 ORT deployment's examples come from torch (the same function) and, with variants in the run, from
    the variants' in-the-loop sets too: not transfer-only. An int8 cell with only transferred sets is."""
    from robustdeploy.evaluation.checks import transfer_only

    mixed = "transfer from torch + transfer from ort-cpu:int8 + transfer from ort-cpu:fp16"
    cells = [{"runtime": "torch", "eps": 0.1, "threat": "white-box on torch + transfer from ort-cpu:int8"},
             {"runtime": "ort-cpu", "eps": 0.1, "threat": mixed},
             {"runtime": "ort-cuda:fp32", "eps": 0.1, "threat": mixed}]
    assert transfer_only(cells).passed
    int8 = {"runtime": "ort-cpu:int8", "eps": 0.1, "threat": "transfer from torch + transfer from ort-cpu:fp16"}
    check = transfer_only([*cells, int8])
    assert not check.passed and "ort-cpu:int8 eps=0.1" in check.detail and "ort-cpu eps" not in check.detail


def test_worst_case_takes_every_stored_example():
    """A set crafted on another source that fools a runtime counts against it (issue 27 item 4), and so does a
    smaller budget's set."""
    y = torch.tensor([0, 1, 2, 3])
    right, wrong_first = y.clone(), torch.tensor([9, 1, 2, 3])
    labels = {("torch", "x"): right, ("ort-cpu", "x"): right,
              ("torch", "square/torch/eps=0.1"): right, ("ort-cpu", "square/torch/eps=0.1"): wrong_first,
              ("torch", "pgd/torch/eps=0.2"): right, ("ort-cpu", "pgd/torch/eps=0.2"): right}
    sets = [{"key": "square/torch/eps=0.1", "attack": "square", "source": "torch", "eps": 0.1, "stage": 0,
             "threat": "score-based on torch"},
            {"key": "pgd/torch/eps=0.2", "attack": "pgd", "source": "torch", "eps": 0.2, "stage": 0,
             "threat": "white-box on torch"}]
    cells = score_cascade(["torch", "ort-cpu"], sets, [0.1, 0.2], y, lambda r, k: labels[r, k])
    by = {(c.runtime, c.eps): c for c in cells}
    assert by["ort-cpu", 0.1].robust_accuracy == 75.0 and by["ort-cpu", 0.2].robust_accuracy == 75.0
    assert by["torch", 0.2].robust_accuracy == 100.0
    assert by["ort-cpu", 0.1].threat == "transfer from torch"


def test_transfer_boosters_stay_in_budget_and_default_off(variant_bundle_dir, digits):
    """MI-FGSM momentum and DI input diversity are options of pgd: inside the budget, still fooling the model,
    and off by default (the plain attack unchanged)."""
    from robustdeploy.attacks import ATTACKS

    model = load_bundle(variant_bundle_dir).reference_model()
    x, y = digits.test.x[:32], digits.test.y[:32]
    plain = ATTACKS.create("pgd", steps=5, seed=0).perturb(model, x, y, 0.2)
    assert torch.equal(plain, ATTACKS.create("pgd", steps=5, seed=0, decay=0.0, diversity_prob=0.0)
                       .perturb(model, x, y, 0.2))
    for knobs in ({"decay": 1.0}, {"diversity_prob": 0.5}, {"decay": 1.0, "diversity_prob": 0.5}):
        torch.manual_seed(0)
        adv = ATTACKS.create("pgd", steps=5, seed=0, early_stop=False, **knobs).perturb(model, x, y, 0.2)
        assert (adv - x).abs().max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert (model(adv).argmax(1) != y).float().mean() > 0.5, knobs


def test_diva_finds_inputs_only_the_deployment_gets_wrong(variant_bundle_dir, tmp_path):
    """`diff --search diva` against int8: stored 8-bit examples the int8 deployment gets wrong while the reference
    gets them right (re-scored on both, not the search's claim)."""
    from robustdeploy.evaluation.plans.diff import DiffConfig, run_diff

    result = run_diff(DiffConfig(bundle=variant_bundle_dir, against=("ort-cpu:int8",), searches=("diva",),
                                 epsilons=(0.1,), budget=20, limit=64, out=tmp_path / "diva.json"))
    from robustdeploy.evaluation.results import load_result

    _, stored = load_result(tmp_path / "diva.json")
    bundle = load_bundle(variant_bundle_dir)
    key = "diva/ort-cpu:int8/eps=0.1"
    ref = create_runtime(bundle, "torch").predict(stored[key])
    dep = create_runtime(bundle, "ort-cpu:int8").predict(stored[key])
    y, claimed = stored["y"], torch.tensor(result.extra["claimed"][key], dtype=torch.long)
    assert len(claimed) > 0
    assert (ref[claimed] == y[claimed]).all() and (dep[claimed] != y[claimed]).all()
    assert all(c["passed"] for c in result.checks)
