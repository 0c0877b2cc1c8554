"""Defense registries, each filled on import: training-side defenses (DEFENSES, `train --defense`),
input detectors (DETECTORS, `export --detector`) and input transformations placed in front of a
classifier (TRANSFORMS, e.g. `patch --lgs`)."""

from robustdeploy.registry import Registry

DEFENSES: Registry = Registry("defense")
DETECTORS: Registry = Registry("detector")
TRANSFORMS: Registry = Registry("input transformation")

from robustdeploy.defenses import advtrain as _advtrain  # noqa: E402,F401  (registers adv-train)
from robustdeploy.defenses import distill as _distill  # noqa: E402,F401  (registers distillation)
from robustdeploy.defenses import lgs as _lgs  # noqa: E402,F401  (registers the lgs transformation)
from robustdeploy.defenses import purify as _purify  # noqa: E402,F401  (registers purifier)
from robustdeploy.defenses import squeeze as _squeeze  # noqa: E402,F401  (registers the squeeze detector)
from robustdeploy.defenses.base import Trained  # noqa: E402

__all__ = ["DEFENSES", "DETECTORS", "TRANSFORMS", "Trained"]
