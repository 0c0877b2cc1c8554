import pytest
import torch

from robustdeploy.attacks import ATTACKS, check_eps, lp_norm, predict
from robustdeploy.bundle import load_bundle
from robustdeploy.errors import RobustDeployError


@pytest.fixture(scope="module")
def model(bundle_dir):
    return load_bundle(bundle_dir).reference_model().requires_grad_(False)


@pytest.fixture(scope="module")
def batch(digits):
    return digits.test.x[:48], digits.test.y[:48]


def _norms(model, attack, x, y):
    """Norm per sample of the adversarial found (inf where none), checking each one on torch."""
    adv = attack.minimize(model, x, y)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    ok = predict(model, x) == y
    fooled = ok & (predict(model, adv) != y)
    assert torch.equal(adv[~fooled], x[~fooled])  # no adversarial: x itself
    return torch.where(fooled, lp_norm(adv - x, attack.norm), torch.tensor(float("inf")))[ok]


@pytest.mark.parametrize("name,norm,few,many", [("ddn", "l2", {"steps": 8}, {"steps": 30}),
                                                 ("dichotomy", "l2", {"search_steps": 2}, {"search_steps": 6}),
                                                 ("dichotomy", "linf", {"search_steps": 2}, {"search_steps": 6}),
                                                 ("minimal", "l2", {"steps": 20}, {"steps": 60})])
def test_minimal_attacks_shrink_norms_with_more_work(name, norm, few, many, model, batch):
    x, y = batch
    short = _norms(model, ATTACKS.create(name, norm=norm, **few), x, y)
    long = _norms(model, ATTACKS.create(name, norm=norm, **many), x, y)
    assert torch.isfinite(long).float().mean() >= 0.9
    assert long.median() <= short.median()


def test_apgd_is_at_least_as_strong_as_pgd(model, digits):
    x, y = digits.test.x[:120], digits.test.y[:120]
    for norm, eps in (("linf", 0.08), ("l2", 0.6)):
        pgd = ATTACKS.create("pgd", norm=norm).perturb(model, x, y, eps)
        apgd = ATTACKS.create("apgd", norm=norm, steps=40).perturb(model, x, y, eps)
        assert (lp_norm(apgd - x, norm) <= eps + 1e-5).all() and apgd.min() >= 0 and apgd.max() <= 1
        assert (predict(model, apgd) == y).sum() <= (predict(model, pgd) == y).sum()


class Saturated(torch.nn.Module):
    """Logits scaled as a distilled model deployed at T = 1 sees them: softmax saturates to one-hot."""

    def __init__(self, model: torch.nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def test_margin_loss_defeats_saturated_logits_where_cross_entropy_fails(model, digits):
    x, y = digits.test.x[:120], digits.test.y[:120]
    hard = Saturated(model)
    robust = {loss: int((predict(hard, ATTACKS.create("pgd", loss=loss, random_start=False)
                                 .perturb(hard, x, y, 0.15)) == y).sum()) for loss in ("ce", "margin")}
    assert robust["margin"] < robust["ce"] - 30, robust


def test_bad_minimal_and_budget_input_is_refused():
    with pytest.raises(RobustDeployError, match="supports l2"):
        ATTACKS.create("ddn", norm="linf")
    with pytest.raises(RobustDeployError, match="outside"):
        check_eps(-0.1, "linf", 64)
    with pytest.raises(RobustDeployError, match="unknown loss"):
        ATTACKS.create("apgd", loss="hinge")
    with pytest.raises(RobustDeployError, match="low <= high"):
        ATTACKS.create("minimal", low=0.5, high=0.2)


def test_minimal_norm_evaluation_from_the_cli(bundle_dir, tmp_path):
    import json

    from tests.conftest import cli

    out = tmp_path / "ddn.json"
    proc = cli("evaluate", bundle_dir, "--attack", "ddn", "--attack-opt", "steps=20", "--eps", "0.5", "--eps", "1.0",
               "--limit", "40", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "median norm" in proc.stdout
    result = json.loads(out.read_text())
    robust = {(c["runtime"], c["eps"]): c["robust_accuracy"] for c in result["cells"]}
    assert robust["ort-cpu", 0.5] >= robust["ort-cpu", 1.0] and len(result["extra"]["norms"]["ddn/torch"]) == 40
