"""Projected gradient descent, L-inf and L2 (Madry et al., ICLR 2018, arXiv:1706.06083).

Defaults follow the paper's MNIST setting: 40 steps of 2.5 * eps / steps, random start; cross-entropy
or the C&W margin loss (`loss="margin"`), which does not saturate on distilled models.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustdeploy.attacks.base import ATTACKS, BoostedGradientAttack


@ATTACKS.register("pgd")
@dataclass
class PGD(BoostedGradientAttack):
    """PGD with random start, restarts and per-sample early stop."""
