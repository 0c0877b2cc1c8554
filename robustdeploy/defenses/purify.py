"""Purification (seed 003; in the spirit of MagNet, Meng and Chen, CCS 2017): `conv-ae` or `conv-vae`.

A purifier is trained on clean training images with its own objective (MSE for the autoencoder, the negative
ELBO for the variational autoencoder) while the classifier stays frozen; the deployment is purifier followed
by classifier, one graph exported as one ONNX model. The run's `ModelSpec.extra = {"purifier": NAME}` tells
`build_classifier` to rebuild the composite. The VAE deploys z = mu; an adaptive attack differentiates it with
EOT over the VAE's sampling (Athalye, Carlini and Wagner, ICML 2018), see `SampledGradients`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy import devices
from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.models import PURIFIERS, Composite
from robustdeploy.train import fit, load_run, new_classifier

EOT_SAMPLES = 10


def reconstruction_loss(model: Composite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model.transform.loss(x)


class SampledGradients(nn.Module):
    """The deployed graph's outputs (log-softmax of the z = mu path) with gradients averaged over `samples` draws
    of z (EOT). Averaging log-softmax makes the cross-entropy and margin gradients exactly the mean of the
    per-draw ones; the forward value stays the deployed one, so an attack judges success on what is deployed."""

    def __init__(self, model: Composite, samples: int = EOT_SAMPLES) -> None:
        super().__init__()
        if samples < 1:
            raise RobustDeployError(f"EOT needs at least one sample, got {samples}")
        self.model, self.samples = model, samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        purifier = self.model.transform
        deployed = F.log_softmax(self.model(x), 1)
        purifier.sample = True
        try:
            drawn = torch.stack([F.log_softmax(self.model(x), 1) for _ in range(self.samples)]).mean(0)
        finally:
            purifier.sample = False
        return deployed.detach() + drawn - drawn.detach()


def adaptive_source(model: nn.Module) -> dict:
    """`Plan` fields for an adaptive attack on `model`: EOT over sampling (source `torch+eot10`) for a purifier
    that samples; the graph itself (no fields) for every other model."""
    if isinstance(model, Composite) and hasattr(model.transform, "sample"):
        return {"source": f"torch+eot{EOT_SAMPLES}", "source_model": SampledGradients(model)}
    return {}


@DEFENSES.register("purifier")
def purifier(config, data: Dataset, base: Path | None = None, purifier: str = "conv-ae", beta: float | None = None,
             **_: object) -> Trained:
    """Train (or load from `base`) a classifier, then a purifier on clean data with the classifier frozen;
    `beta`: the conv-vae's KL weight."""
    PURIFIERS.get(purifier)
    if beta is not None and purifier != "conv-vae":
        raise RobustDeployError(f"--beta is the conv-vae's KL weight; the {purifier} purifier has none (drop --beta)")
    network = PURIFIERS.create(purifier, channels=data.input_shape[0], beta=beta)  # checks beta before training
    _, h, w = data.input_shape
    if h % 2 or w % 2:
        raise RobustDeployError(f"the {purifier} purifier needs even image sizes, got {h}x{w}; use --image-size")
    if base is not None:
        classifier, record = load_run(Path(base))
        if record.spec.input_shape != data.input_shape or record.spec.extra:
            raise RobustDeployError(f"--base {base} is not a plain classifier for {config.data.name} "
                                    f"{data.input_shape}; train one with `robustdeploy train`")
        spec = record.spec
        classifier = devices.place(classifier, config.device, train=True)
    else:
        classifier, spec = new_classifier(config.arch, data)
        classifier = devices.place(classifier, config.device, train=True)
        fit(classifier, data, config, desc="classifier")
    classifier.requires_grad_(False)
    spec = replace(spec, extra={"purifier": purifier})
    model = devices.place(Composite(network, classifier), config.device, train=True)
    losses = fit(model, data, config, loss_fn=reconstruction_loss, desc="purifier")
    model.requires_grad_(True)
    info = {"purifier": purifier, "base": str(base) if base else None, "loss": network.objective}
    if hasattr(network, "sample"):
        info |= {"inference": "z = mu (deterministic, exported)", "adaptive_eot_samples": EOT_SAMPLES,
                 "kl_weight": network.beta}
    return Trained(model, spec, losses, info)
