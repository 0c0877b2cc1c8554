"""input_gradients: no false alarm on a well-trained CNN; a distilled or constant model fails with fitting advice."""

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.evaluation import checks


def test_a_well_trained_cnn_passes_with_every_loss(bundle_dir, digits):
    model = load_bundle(bundle_dir).reference_model().requires_grad_(False)
    for loss in ("ce", "margin", "dlr"):
        check = checks.input_gradients(model, digits.test.x, digits.test.y, loss)
        assert check.passed, check.detail


class Saturated(torch.nn.Module):
    """The CNN with its logits times T = 100: what a student distilled at T = 100 and deployed at T = 1 shows the
    attacker (Papernot et al. 2016; Carlini and Wagner 2017), without minutes of distillation in a test."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 100.0 * self.model(x)


def test_a_distilled_softmax_is_told_to_use_the_margin(bundle_dir, digits):
    model = Saturated(load_bundle(bundle_dir).reference_model().requires_grad_(False))
    check = checks.input_gradients(model, digits.test.x, digits.test.y, "ce")
    assert not check.passed and "saturated softmax" in check.detail and "--loss margin" in check.detail
    assert checks.input_gradients(model, digits.test.x, digits.test.y, "margin").passed


def test_a_constant_model_is_told_to_retrain(digits):
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.nn.functional.one_hot(digits.test.y[0], 10).float())
    check = checks.input_gradients(constant, digits.test.x, digits.test.y, "ce")
    assert not check.passed and "does not depend on its input" in check.detail and "retrain" in check.detail


def test_a_saturated_ce_is_covered_by_a_dlr_attack_in_the_same_cascade(bundle_dir, digits):
    """pgd on ce beside apgd on dlr: the vanishing ce gradient undermines no cascade number, so the check passes and
    says why; ce alone keeps its warning."""
    model = Saturated(load_bundle(bundle_dir).reference_model().requires_grad_(False))
    found = {loss: checks.input_gradients(model, digits.test.x, digits.test.y, loss) for loss in ("ce", "dlr")}
    ce, dlr = checks.covered_losses(found)
    assert ce.passed and "covered" in ce.detail and "dlr" in ce.detail and dlr.passed
    alone, = checks.covered_losses({"ce": found["ce"]})
    assert not alone.passed and "--loss margin" in alone.detail
