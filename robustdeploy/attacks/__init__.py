"""Attack registry: one file per attack, the shared loop in base.py."""

from robustdeploy.attacks import apgd as _apgd  # noqa: F401
from robustdeploy.attacks import ddn as _ddn  # noqa: F401
from robustdeploy.attacks import dichotomy as _dichotomy  # noqa: F401
from robustdeploy.attacks import diffchaser as _diffchaser  # noqa: F401
from robustdeploy.attacks import diva as _diva  # noqa: F401
from robustdeploy.attacks import fgsm as _fgsm  # noqa: F401
from robustdeploy.attacks import hsj as _hsj  # noqa: F401
from robustdeploy.attacks import minimal as _minimal  # noqa: F401
from robustdeploy.attacks import pgd as _pgd  # noqa: F401
from robustdeploy.attacks import square as _square  # noqa: F401
from robustdeploy.attacks.base import (
    ATTACKS,
    Attack,
    FixedBudgetAttack,
    MinimalNormAttack,
    check_eps,
    lp_norm,
    predict,
)
from robustdeploy.attacks.differential import SEARCHES, DifferentialSearch
from robustdeploy.attacks.spec import AttackSpec, cascade, make_attack

__all__ = ["ATTACKS", "SEARCHES", "Attack", "AttackSpec", "DifferentialSearch", "FixedBudgetAttack",
           "MinimalNormAttack", "cascade", "check_eps", "lp_norm", "make_attack", "predict"]
