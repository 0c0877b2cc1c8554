"""Seed 001's MNIST networks: MLP and CNN with dropout (-d) and batch-norm (-bn) variants."""

from __future__ import annotations

from torch import nn

from robustdeploy.models.base import MODELS


def _mlp(input_shape: tuple[int, int, int], num_classes: int, variant: str) -> nn.Module:
    c, h, w = input_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = c * h * w
    for hidden in (512, 256):
        layers.append(nn.Linear(width, hidden))
        if variant == "bn":
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        if variant == "d":
            layers.append(nn.Dropout(0.3))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn(input_shape: tuple[int, int, int], num_classes: int, variant: str) -> nn.Module:
    c, h, w = input_shape
    layers: list[nn.Module] = []
    channels = c
    for out in (32, 64):
        layers.append(nn.Conv2d(channels, out, 3, padding=1))
        if variant == "bn":
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    layers.append(nn.Flatten())
    if variant == "d":
        layers.append(nn.Dropout(0.25))
    layers += [nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU()]
    if variant == "d":
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(128, num_classes))
    return nn.Sequential(*layers)


def _register(name: str, builder, variant: str) -> None:
    @MODELS.register(name)
    def factory(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return builder(input_shape, num_classes, variant)

    factory.__doc__ = f"Seed 001 {name}"


for _name, _builder in (("mlp", _mlp), ("cnn", _cnn)):
    for _suffix, _variant in (("", ""), ("-d", "d"), ("-bn", "bn")):
        _register(_name + _suffix, _builder, _variant)
