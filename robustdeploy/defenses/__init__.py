"""Defenses registry: detectors and training-side defenses, created by name."""

from __future__ import annotations

from robustdeploy.registry import Registry

DEFENSES: Registry = Registry("defense")

from robustdeploy.defenses import squeeze  # noqa: E402,F401  (registers "squeeze")
