"""Standard training: cross-entropy on clean images, no defense."""

from __future__ import annotations

from robustdeploy import devices
from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.train import fit, new_classifier


@DEFENSES.register("none")
def standard(config, data: Dataset, **_: object) -> Trained:
    """The undefended classifier of `config.arch`."""
    model, spec = new_classifier(config.arch, data)
    model = devices.place(model, config.device, train=True)
    return Trained(model, spec, fit(model, data, config))
