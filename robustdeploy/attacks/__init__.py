"""Attack registry: one file per attack, the shared loop in base.py."""

from robustdeploy.attacks import fgsm as _fgsm  # noqa: F401
from robustdeploy.attacks import ot_patch as _ot_patch  # noqa: F401
from robustdeploy.attacks import pgd as _pgd  # noqa: F401
from robustdeploy.attacks.base import (
    ATTACKS,
    Attack,
    FixedBudgetAttack,
    MinimalNormAttack,
    check_eps,
    lp_norm,
    predict,
    realise_8bit,
)

__all__ = ["ATTACKS", "Attack", "FixedBudgetAttack", "MinimalNormAttack", "check_eps", "lp_norm", "predict",
           "realise_8bit"]
