"""Adversarial training (Madry et al., ICLR 2018, arXiv:1706.06083), with any registered gradient attack.

Each batch is replaced by adversarial examples crafted against the current model (PGD by default: L-inf,
random start, no early stop) and the model is trained on them with cross-entropy. The paper trains MNIST
with 40 steps.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch
from torch import nn

from robustdeploy.attacks import AttackSpec, FixedBudgetAttack, check_eps, make_attack
from robustdeploy.attacks.spec import takes
from robustdeploy.capability import Capability
from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.train import fit, new_classifier


def adversarial_loss(attack: FixedBudgetAttack, eps: float, seed: int):
    """loss_fn for `train.fit`: cross-entropy on examples crafted in eval mode against the model itself."""
    seeds = itertools.count(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fresh = replace(attack, seed=next(seeds)) if "seed" in attack.params() else attack
        model.eval()
        adv = fresh.perturb(model, x, y, eps).detach()
        model.train()
        return nn.functional.cross_entropy(model(adv), y)

    return loss


@DEFENSES.register("adv-train")
def adv_train(config, data: Dataset, eps: float | None = None, attack_steps: int = 40, attack: str = "pgd",
              **_: object) -> Trained:
    """Train on L-inf examples of budget `eps` (pixel units) from `attack`, `attack_steps` steps each."""
    if eps is None:
        raise RobustDeployError("--defense adv-train needs --eps (the L-inf training budget in pixel units, "
                                "e.g. --eps 0.1)")
    check_eps(eps, "linf", 1)
    if attack_steps < 1:
        raise RobustDeployError(f"--attack-steps must be at least 1, got {attack_steps}")
    knobs = {"steps": attack_steps, "early_stop": False}
    crafter = make_attack(AttackSpec(attack, {k: v for k, v in knobs.items() if k in takes(attack)}), config.seed)
    if not isinstance(crafter, FixedBudgetAttack) or crafter.needs < Capability.GRADIENTS:
        raise RobustDeployError(f"adversarial training needs a fixed-budget gradient attack (pgd, fgsm, apgd), "
                                f"not {attack!r}")
    model, spec = new_classifier(config.arch, data)
    model.to(config.device)
    losses = fit(model, data, config, loss_fn=adversarial_loss(crafter, eps, config.seed), desc="adv-train")
    return Trained(model, spec, losses, {"eps": eps, "norm": "linf", "attack": attack, "attack_steps": attack_steps})
