"""A classifier's two parts: penultimate features and the final linear head (feature-space attacks, transfer)."""

from __future__ import annotations

import torch
from torch import nn

from robustdeploy.errors import RobustDeployError
from robustdeploy.models.base import Classifier


def _net(model: nn.Module) -> nn.Module:
    if not isinstance(model, Classifier):
        raise RobustDeployError(f"a {type(model).__name__} has no single feature extractor; use a plain classifier "
                                "(no purifier or other transformation in front)")
    return model.net


def penultimate(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Features feeding the last linear layer, shape (N, D), for pixels `x` in [0, 1]."""
    net = _net(model)
    z = (x - model.mean) / model.std
    if isinstance(net, nn.Sequential):
        return net[:-1](z).flatten(1)
    if hasattr(net, "forward_head"):  # timm
        return net.forward_head(net.forward_features(z), pre_logits=True).flatten(1)
    raise RobustDeployError(f"cannot find the features of a {type(net).__name__}")


def head(model: Classifier) -> nn.Linear:
    """The final linear layer (seed nets: the Sequential's last module; timm: `get_classifier()`)."""
    net = _net(model)
    last = net[-1] if isinstance(net, nn.Sequential) else net.get_classifier() if hasattr(net, "get_classifier") \
        else None
    if not isinstance(last, nn.Linear):
        raise RobustDeployError(f"a {type(net).__name__} does not end in one linear layer")
    return last
