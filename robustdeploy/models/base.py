"""The model registry and the classifier wrapper that takes raw [0, 1] pixels."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from robustdeploy import devices
from robustdeploy.errors import RobustDeployError
from robustdeploy.registry import Registry

MODELS: Registry[nn.Module] = Registry("architecture")
PURIFIERS: Registry[nn.Module] = Registry("purifier")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier's graph (weights live in safetensors)."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    temperature: float = 1.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


class Classifier(nn.Module):
    """Normalisation + network: the graph that is trained, attacked and exported. Input: pixels in [0, 1].

    `temperature` divides the logits (defensive distillation trains at T and deploys at T = 1).
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def create_net(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Create an untrained network by registry name (`cnn`, `mlp-bn`, `timm:resnet18`, `tv:resnet18`, ...)."""
    if arch.startswith("timm:"):
        from robustdeploy.models.timm_nets import create_timm

        return create_timm(arch[5:], input_shape, num_classes)
    if arch.startswith("tv:"):
        from robustdeploy.models.tv_nets import create_tv

        return create_tv(arch[3:], input_shape, num_classes)
    return MODELS.create(arch, input_shape=input_shape, num_classes=num_classes)


def check_input_size(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Refuse, in one line, an architecture that cannot take images of `input_shape` (e.g. `cnn`'s two poolings on
    3x3 images), before any training starts."""
    try:
        with torch.no_grad(), warnings.catch_warnings(), torch.random.fork_rng(devices=[]):  # training's RNG untouched
            warnings.simplefilter("ignore")  # e.g. a zero-element Linear: the refusal below says it in words
            devices.place(create_net(arch, input_shape, num_classes), "cpu")(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        size = "x".join(map(str, input_shape[1:]))
        raise RobustDeployError(f"architecture {arch!r} cannot take {size} images ({str(exc).splitlines()[0]}); "
                                "use a larger --image-size or another --arch") from None


class Composite(nn.Module):
    """transform -> classifier (a purifier, LGS, ...): one graph to train, attack end to end, and export."""

    def __init__(self, transform: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.transform, self.classifier = transform, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(x))


def build_classifier(spec: ModelSpec) -> nn.Module:
    """The classifier of `spec`; with `extra["purifier"]`, purifier followed by classifier."""
    if spec.extra.get("purifier"):
        name = spec.extra["purifier"]
        if name not in PURIFIERS:
            raise RobustDeployError(f"unknown purifier {name!r} in the model spec; known: {', '.join(PURIFIERS)}")
        plain = replace(spec, extra={})
        return Composite(PURIFIERS.create(name, channels=spec.input_shape[0]), build_classifier(plain))
    if len(spec.mean) != spec.input_shape[0] or len(spec.std) != spec.input_shape[0]:
        raise RobustDeployError(f"normalisation has {len(spec.mean)} channels, input has {spec.input_shape[0]}")
    return Classifier(create_net(spec.arch, spec.input_shape, spec.num_classes), spec.mean, spec.std)


def load_weights(spec: ModelSpec, weights: Path) -> nn.Module:
    """The graph of `spec` with weights read from safetensors (never pickle), in eval mode."""
    from safetensors.torch import load_file

    model = build_classifier(spec)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise RobustDeployError(f"cannot read weights {weights} ({str(exc).splitlines()[0][:160]}); "
                                "restore or re-create them") from None
    return load_state(model, state, f"weights {weights}", "give the weights saved for this architecture and "
                      "input shape")


def load_state(model: nn.Module, state: dict, source: str, fix: str) -> nn.Module:
    """`state` loaded strictly into `model` (eval mode): missing or unexpected tensors, or tensors of another
    shape, are one line naming the first few, ending in `fix`."""
    expected = model.state_dict()
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        raise RobustDeployError(f"{source} do not fit the model: {len(missing)} missing ({_few(missing)}), "
                                f"{len(unexpected)} unexpected ({_few(unexpected)}) tensors; {fix}")
    wrong = [k for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise RobustDeployError(f"{source} do not fit the model: {k} has shape {list(state[k].shape)}, expected "
                                f"{list(expected[k].shape)} ({len(wrong)} mismatched tensors); {fix}")
    model.load_state_dict(state)
    return model.eval()


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") if names else "none"
