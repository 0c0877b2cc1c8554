"""Defenses, each registered on import (see `defenses.base` for the registries)."""

from robustdeploy.defenses import advtrain as _advtrain  # noqa: F401  (registers adv-train)
from robustdeploy.defenses import distill as _distill  # noqa: F401  (registers distillation)
from robustdeploy.defenses import lgs as _lgs  # noqa: F401  (registers the lgs transformation)
from robustdeploy.defenses import purify as _purify  # noqa: F401  (registers purifier)
from robustdeploy.defenses import squeeze as _squeeze  # noqa: F401  (registers the squeeze detector)
from robustdeploy.defenses import standard as _standard  # noqa: F401  (registers none)
from robustdeploy.defenses import transfer as _transfer  # noqa: F401  (registers transfer)
from robustdeploy.defenses.base import DEFENSES, DETECTORS, TRANSFORMS, Trained

__all__ = ["DEFENSES", "DETECTORS", "TRANSFORMS", "Trained"]
