"""Autoencoder purification (seed 003; in the spirit of MagNet, Meng and Chen, CCS 2017).

A small convolutional autoencoder is trained on clean training images with a reconstruction (MSE) loss;
the deployment is purifier followed by classifier, one graph exported as one ONNX model. The run's
`ModelSpec.extra = {"purifier": "conv-ae"}` tells `build_classifier` to rebuild the composite.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.models import PURIFIERS, Composite
from robustdeploy.train import fit, load_run, new_classifier

PURIFIER = "conv-ae"


def reconstruction_loss(model: Composite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model.transform(x), x)


@DEFENSES.register("purifier")
def purifier(config, data: Dataset, base: Path | None = None, **_: object) -> Trained:
    """Train (or load from `base`) a classifier, then a purifier on clean data with the classifier frozen."""
    _, h, w = data.input_shape
    if h % 2 or w % 2:
        raise RobustDeployError(f"the conv-ae purifier needs even image sizes, got {h}x{w}; use --image-size")
    if base is not None:
        classifier, record = load_run(Path(base))
        if record.spec.input_shape != data.input_shape or record.spec.extra:
            raise RobustDeployError(f"--base {base} is not a plain classifier for {config.data.name} "
                                    f"{data.input_shape}; train one with `robustdeploy train`")
        spec = record.spec
        classifier.to(config.device)
    else:
        classifier, spec = new_classifier(config.arch, data)
        classifier.to(config.device)
        fit(classifier, data, config, desc="classifier")
    classifier.requires_grad_(False)
    spec = replace(spec, extra={"purifier": PURIFIER})
    model = Composite(PURIFIERS.create(PURIFIER, channels=data.input_shape[0]), classifier).to(config.device)
    losses = fit(model, data, config, loss_fn=reconstruction_loss, desc="purifier")
    model.requires_grad_(True)
    return Trained(model, spec, losses, {"purifier": PURIFIER, "base": str(base) if base else None,
                                         "loss": "mse"})
