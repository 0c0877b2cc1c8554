import pytest
import torch

from robustdeploy.attacks import ATTACKS, lp_norm, predict
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.runtimes import create_runtime


@pytest.fixture(scope="module")
def model(bundle_dir):
    return load_bundle(bundle_dir).reference_model().requires_grad_(False)


@pytest.mark.parametrize("name,norm,eps", [("fgsm", "linf", 0.15), ("pgd", "linf", 0.15),
                                           ("fgsm", "l2", 1.0), ("pgd", "l2", 1.0)])
def test_attack_lowers_accuracy_on_torch_and_ort_within_budget(name, norm, eps, model, bundle_dir, digits):
    x, y = digits.test.x, digits.test.y
    adv = ATTACKS.create(name, norm=norm).perturb(model, x, y, eps)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (lp_norm(adv - x, norm) <= eps + 1e-5).all()
    bundle = load_bundle(bundle_dir)
    for runtime in ("torch", "ort-cpu"):
        rt = create_runtime(bundle, runtime)
        clean = (rt.predict(x) == y).float().mean().item()
        robust = (rt.predict(adv) == y).float().mean().item()
        assert robust < clean - 0.15, (runtime, clean, robust)


def test_pgd_is_at_least_as_strong_as_fgsm(model, digits):
    x, y = digits.test.x, digits.test.y
    fgsm = ATTACKS.create("fgsm").perturb(model, x, y, 0.1)
    pgd = ATTACKS.create("pgd").perturb(model, x, y, 0.1)
    assert (predict(model, pgd) == y).sum() <= (predict(model, fgsm) == y).sum()


def test_apgd_targeted_goes_to_its_targets_and_adds_to_apgd_dlr(model, digits):
    """AutoAttack's APGD-T: with one target, what it fools lands on the clean image's most likely wrong class;
    with nine, it fools samples APGD-DLR left standing."""
    x, y = digits.test.x, digits.test.y
    eps = 0.1
    with torch.no_grad():
        logits = model(x)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    one = predict(model, ATTACKS.create("apgd-t", targets=1, steps=30).perturb(model, x, y, eps))
    fooled = one != y
    assert fooled.sum() > 10 and (one[fooled] == runner_up[fooled]).float().mean() > 0.9
    dlr = predict(model, ATTACKS.create("apgd", loss="dlr", steps=30).perturb(model, x, y, eps)) == y
    targeted = predict(model, ATTACKS.create("apgd-t", steps=30).perturb(model, x, y, eps)) == y
    assert (dlr & ~targeted).sum() > 0  # a cascade gains from it
    with pytest.raises(RobustDeployError, match="targeted DLR"):
        ATTACKS.create("apgd-t", loss="ce")


def test_early_stop_changes_no_result_and_saves_work(model, digits):
    x, y = digits.test.x, digits.test.y
    runs = {}
    for early in (True, False):
        attack = ATTACKS.create("pgd", early_stop=early, restarts=2)
        adv = attack.perturb(model, x, y, 0.1)
        runs[early] = (predict(model, adv) == y, attack.stats.gradients)
    assert torch.equal(runs[True][0], runs[False][0])
    assert runs[True][1] < runs[False][1]


def test_samples_already_wrong_are_not_attacked(model, digits):
    x, y = digits.test.x, digits.test.y
    wrong = predict(model, x) != y
    y_bad = torch.where(wrong, y, (y + 1) % 10)  # every sample is "wrong" w.r.t. these labels
    adv = ATTACKS.create("pgd").perturb(model, x, y_bad, 0.1)
    assert torch.equal(adv, x)


def test_bad_attack_settings_are_refused():
    with pytest.raises(RobustDeployError, match="supports linf, l2"):
        ATTACKS.create("pgd", norm="l1")
    with pytest.raises(RobustDeployError, match="unknown loss"):
        ATTACKS.create("pgd", loss="hinge")
    with pytest.raises(RobustDeployError, match="at least 1"):
        ATTACKS.create("pgd", steps=0)
