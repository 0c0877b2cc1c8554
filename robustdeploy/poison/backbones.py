"""Pretrained surrogate backbones (seed 000): `--surrogate timm:NAME --surrogate-weights FILE.safetensors`, a timm
feature extractor (`num_classes=0`) loaded from the user's weights without unpickling, frozen, behind its own
preprocessing (channels, size, mean and std), which travels as data in the poison set's manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy.errors import RobustDeployError
from robustdeploy.models.base import load_state

METADATA_KEYS = ("mean", "std", "input_size")  # optional safetensors metadata, JSON values


@dataclass(frozen=True)
class BackbonePreprocessing:
    """What a backbone expects: `channels` (grey images are repeated, colour ones averaged), `size` (square resize,
    None keeps the dataset's) and per-channel `mean` / `std` on [0, 1] pixels."""

    channels: int
    size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "file metadata" or "timm pretrained_cfg"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.mean(1, keepdim=True).expand(
                -1, self.channels, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


class FrozenBackbone(nn.Module):
    """Preprocessing -> timm feature extractor, parameters frozen and kept in eval mode (batch-norm statistics
    never move, whatever `train()` a caller runs)."""

    def __init__(self, net: nn.Module, preprocessing: BackbonePreprocessing) -> None:
        super().__init__()
        self.net, self.preprocessing = net, preprocessing
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocessing(x)).flatten(1)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file() or path.suffix != ".safetensors":
        raise RobustDeployError(f"--surrogate-weights {path} is not a .safetensors file; save the backbone's "
                                "state dict with safetensors.torch.save_file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise RobustDeployError(f"cannot read {path} as safetensors ({exc}); re-save it") from None


def _preprocessing(net: nn.Module, channels: int, meta: dict[str, str], path: Path) -> BackbonePreprocessing:
    """From the file's metadata (`mean`, `std`, `input_size` as JSON) where present, else timm's pretrained_cfg."""
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    try:
        given = {k: json.loads(meta[k]) for k in METADATA_KEYS if k in meta}
    except json.JSONDecodeError:
        raise RobustDeployError(f"{path}: metadata {', '.join(METADATA_KEYS)} must be JSON numbers or lists") from None
    mean = given.get("mean", cfg.get("mean", (0.5,)))
    std = given.get("std", cfg.get("std", (0.5,)))
    size = given.get("input_size", (cfg.get("input_size") or (None, None, None))[-1])
    mean, std = (tuple(float(v) for v in (s if isinstance(s, list | tuple) else [s])) for s in (mean, std))
    if len(mean) != channels:  # ImageNet statistics on a backbone with another channel count: their average
        mean = (sum(mean) / len(mean),) * channels
    if len(std) != channels:
        std = (sum(std) / len(std),) * channels
    return BackbonePreprocessing(channels, None if size is None else int(size), mean, std,
                                 "file metadata" if given else "timm pretrained_cfg")


def load_backbone(arch: str, path: Path) -> tuple[FrozenBackbone, dict]:
    """`timm:NAME` with the weights in `path` (a classifier head in the file is dropped), frozen; and how it was
    made, for the manifest."""
    if not arch.startswith("timm:"):
        raise RobustDeployError(f"--surrogate-weights goes with a timm:NAME surrogate, not {arch!r}")
    import timm

    from robustdeploy.models.timm_nets import create_timm

    path = Path(path)
    state, meta = _read(path)
    net = create_timm(arch[5:], (3, 32, 32), 0)  # checks the name; rebuilt below with the file's channels
    first = next(k for k, v in net.state_dict().items() if v.ndim == 4)
    if first not in state:
        raise RobustDeployError(f"{path} has no tensor {first!r}: these are not {arch} weights; check --surrogate")
    channels = int(state[first].shape[1])
    net = timm.create_model(arch[5:], pretrained=False, num_classes=0, in_chans=channels)
    head = (getattr(net, "pretrained_cfg", {}) or {}).get("classifier")
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(f"{h}.") for h in heads)}
    load_state(net, state, f"the weights in {path}", f"check that they are {arch} weights")
    preprocessing = _preprocessing(net, channels, meta, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    backbone = FrozenBackbone(net, preprocessing)
    with torch.no_grad():
        dim = backbone(torch.zeros(1, channels, preprocessing.size or 32, preprocessing.size or 32)).shape[1]
    return backbone, {"weights": str(path), "sha256": digest, "preprocessing": asdict(preprocessing),
                      "feature_dim": int(dim)}
