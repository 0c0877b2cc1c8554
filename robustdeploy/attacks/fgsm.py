"""Fast gradient sign method (Goodfellow et al., ICLR 2015, arXiv:1412.6572); L2 is the fast gradient method."""

from __future__ import annotations

from dataclasses import dataclass

from robustdeploy.attacks.base import ATTACKS, BoostedGradientAttack


@ATTACKS.register("fgsm")
@dataclass
class FGSM(BoostedGradientAttack):
    """One step of size eps along the gradient's sign (L-inf) or direction (L2), no random start."""

    steps: int = 1
    rel_step: float = 1.0
    random_start: bool = False
