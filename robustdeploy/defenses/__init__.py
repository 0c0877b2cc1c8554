"""Defenses: the registry, and the training-side defenses registered into it on import."""

from robustdeploy.registry import Registry

DEFENSES: Registry = Registry("defense")

from robustdeploy.defenses import advtrain as _advtrain  # noqa: E402,F401  (registers adv-train)
from robustdeploy.defenses import distill as _distill  # noqa: E402,F401  (registers distillation)
from robustdeploy.defenses import purify as _purify  # noqa: E402,F401  (registers purifier)
from robustdeploy.defenses.base import Trained  # noqa: E402

__all__ = ["DEFENSES", "Trained"]
