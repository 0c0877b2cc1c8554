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
from robustdeploy.defenses import DEFENSES
from robustdeploy.defenses.base import Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.models import ModelSpec

PURIFIERS = ("conv-ae",)


class ConvAutoencoder(nn.Module):
    """conv 32 -> pool /2 -> conv 8 (bottleneck) -> nearest x2 -> conv 32 -> conv C -> sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class PurifiedClassifier(nn.Module):
    """Pixels in [0, 1] -> purifier -> classifier -> logits."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x))


def build_purified(spec: ModelSpec) -> PurifiedClassifier:
    """Rebuild the composite from a spec whose `extra["purifier"]` names the purifier."""
    from robustdeploy.models import build_classifier

    name = spec.extra["purifier"]
    if name not in PURIFIERS:
        raise RobustDeployError(f"unknown purifier {name!r} in the model spec; known: {', '.join(PURIFIERS)}")
    return PurifiedClassifier(ConvAutoencoder(spec.input_shape[0]), build_classifier(replace(spec, extra={})))


def reconstruction_loss(model: PurifiedClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model.purifier(x), x)


@DEFENSES.register("purifier")
def purifier(config, data: Dataset, base: Path | None = None, **_: object) -> Trained:
    """Train (or load from `base`) a classifier, then a purifier on clean data with the classifier frozen."""
    from robustdeploy.train import fit, load_run, new_classifier

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
    spec = replace(spec, extra={"purifier": PURIFIERS[0]})
    model = PurifiedClassifier(ConvAutoencoder(data.input_shape[0]), classifier).to(config.device)
    losses = fit(model, data, config, loss_fn=reconstruction_loss, desc="purifier")
    model.requires_grad_(True)
    return Trained(model, spec, losses, {"purifier": PURIFIERS[0], "base": str(base) if base else None,
                                         "loss": "mse"})
