"""Defenses: training-side defenses (DEFENSES, used by `train --defense`) and input detectors
(DETECTORS, used by `export --detector`), each registered on import."""

from robustdeploy.registry import Registry

DEFENSES: Registry = Registry("defense")
DETECTORS: Registry = Registry("detector")

from robustdeploy.defenses import advtrain as _advtrain  # noqa: E402,F401  (registers adv-train)
from robustdeploy.defenses import distill as _distill  # noqa: E402,F401  (registers distillation)
from robustdeploy.defenses import purify as _purify  # noqa: E402,F401  (registers purifier)
from robustdeploy.defenses import squeeze as _squeeze  # noqa: E402,F401  (registers the squeeze detector)
from robustdeploy.defenses.base import Trained  # noqa: E402

__all__ = ["DEFENSES", "DETECTORS", "Trained"]
