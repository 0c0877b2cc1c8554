"""PGD adversarial training (Madry et al., ICLR 2018, arXiv:1706.06083).

Each batch is replaced by PGD adversarial examples crafted against the current model (L-inf, random start,
no early stop), and the model is trained on them with cross-entropy. The paper trains MNIST with 40 steps.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from robustdeploy.attacks import ATTACKS
from robustdeploy.attacks.base import check_eps
from robustdeploy.data import Dataset
from robustdeploy.defenses import DEFENSES
from robustdeploy.defenses.base import Trained
from robustdeploy.errors import RobustDeployError


def adversarial_loss(eps: float, steps: int, seed: int):
    """loss_fn for `train.fit`: cross-entropy on PGD examples crafted in eval mode against the model itself."""
    seeds = itertools.count(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attack = ATTACKS.create("pgd", steps=steps, early_stop=False, seed=next(seeds))
        model.eval()
        adv = attack.perturb(model, x, y, eps).detach()
        model.train()
        return nn.functional.cross_entropy(model(adv), y)

    return loss


@DEFENSES.register("adv-train")
def adv_train(config, data: Dataset, eps: float | None = None, attack_steps: int = 40, **_: object) -> Trained:
    """Train on L-inf PGD examples of budget `eps` (pixel units), `attack_steps` steps each."""
    from robustdeploy.train import fit, new_classifier

    if eps is None:
        raise RobustDeployError("--defense adv-train needs --eps (the L-inf training budget in pixel units, "
                                "e.g. --eps 0.1)")
    check_eps(eps, "linf", 1)
    if attack_steps < 1:
        raise RobustDeployError(f"--attack-steps must be at least 1, got {attack_steps}")
    model, spec = new_classifier(config.arch, data)
    model.to(config.device)
    losses = fit(model, data, config, loss_fn=adversarial_loss(eps, attack_steps, config.seed), desc="adv-train")
    return Trained(model, spec, losses, {"eps": eps, "norm": "linf", "attack": "pgd", "attack_steps": attack_steps})
