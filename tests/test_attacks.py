import pytest
import torch
from torch.overrides import TorchFunctionMode

from robustdeploy.attacks import ATTACKS, lp_norm, predict
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.grid import realise
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


def plain_pgd(model, x, y, eps, steps=40, rel_step=2.5):
    """Textbook PGD from x (no random start, no early stop): the trajectory robustdeploy's loop must not lose."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(adv), y, reduction="sum"), adv)
        adv = (x + (adv.detach() + rel_step * eps / steps * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


@pytest.mark.parametrize("check_every", [1, 7])
def test_every_sample_plain_pgd_fools_after_rounding_is_fooled(check_every, model, digits):
    """Checking the realised iterate only every k steps (and at the last) still fools every sample that plain PGD
    followed by rounding fools, and early stop saves gradient work."""
    x, y, eps = digits.test.x, digits.test.y, 0.08
    attack = ATTACKS.create("pgd", random_start=False, check_every=check_every)
    attack.realiser = lambda adv, xb, e: realise(adv, xb, e, "linf")
    ours = predict(model, realise(attack.perturb(model, x, y, eps), x, eps, "linf")) != y
    plain = predict(model, realise(plain_pgd(model, x, y, eps), x, eps, "linf")) != y
    assert plain.sum() > 20 and not (plain & ~ours).any()
    assert attack.stats.gradients < 40 * int((predict(model, x) == y).sum())


class HostReads(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device (or index by a boolean mask)."""

    SYNCS = {"nonzero", "item", "tolist", "__bool__", "numpy", "cpu", "__int__", "__float__"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name in ("__getitem__", "__setitem__") and len(args) > 1 and torch.is_tensor(args[1]) \
            and args[1].dtype == torch.bool
        if name in self.SYNCS or masked:
            key = f"{name}[mask]" if masked else name
            self.reads[key] = self.reads.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,steps", [("pgd", 40), ("apgd", 50)])
def test_the_attack_loop_reads_the_host_only_at_checks(name, steps, model, digits):
    x, y = digits.test.x[:200], digits.test.y[:200]
    attack = ATTACKS.create(name, steps=steps, check_every=10)
    attack.realiser = lambda adv, xb, e: realise(adv, xb, e, "linf")
    with HostReads() as counted:
        attack.perturb(model, x, y, 0.05)
    checks = steps // 10 + 1
    assert set(counted.reads) <= {"nonzero"}, counted.reads  # no .item(), no boolean-mask indexing
    assert counted.reads.get("nonzero", 0) <= 2 * checks + 1, counted.reads  # two per check, one per restart


def test_a_judge_is_asked_once_per_check(model, bundle_dir, digits):
    """With a deployment deciding success (ONNX Runtime on the CPU), each check is one round trip to it."""
    x, y = digits.test.x[:100], digits.test.y[:100]
    deployment, calls = create_runtime(load_bundle(bundle_dir), "ort-cpu"), []
    attack = ATTACKS.create("pgd", steps=20, check_every=5)
    attack.realiser = lambda adv, xb, e: realise(adv, xb, e, "linf")
    attack.judge = lambda z: calls.append(len(z)) or deployment.logits(z)
    adv = attack.perturb(model, x, y, 0.15)
    assert 2 <= len(calls) <= 1 + 20 // 5  # the clean check, then steps 0, 5, 10, 15 (the last iterate is re-scored)
    fooled = deployment.predict(realise(adv, x, 0.15, "linf")) != y
    assert fooled.sum() > 20
