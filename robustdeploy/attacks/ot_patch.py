"""Universal targeted adversarial patch by optimal transport of feature distributions (seed 004).

"Optimal Transport Based Adversarial Patch To Leverage Large Scale Attack Transferability" (ICLR 2024
submission, openreview nZP10evtkV): the patch delta minimises, over random placements t, the sum over
layers l of SW_2^2 between the features of patched source-class images and the features of clean
target-class images, plus a total-variation term. Sliced Wasserstein comes from POT
(`ot.sliced_wasserstein_distance`, torch backend, so gradients reach the patch), SW_500 as in the paper.
Features are taken with forward hooks and global-average-pooled per layer (the seed's extractor), by default
at a timm model's stage outputs (`feature_info`) or else at every activation. The expectation over
transformations (EOT) draws a placement per image and a patch scale per step. `method="ce"` is the
decision-boundary baseline: cross-entropy to the target class, under the same EOT and TV term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robustdeploy.errors import RobustDeployError
from robustdeploy.progress import progress

METHODS = ("sw", "ce")
FEATURE_TYPES = (nn.ReLU, nn.GELU, nn.SiLU)


@dataclass(frozen=True)
class PatchConfig:
    target: int
    method: str = "sw"
    patch_size: float = 0.25  # fraction of the image area; the patch is square
    steps: int = 200
    lr: float = 0.05  # Adam on the patch pixels
    batch_size: int = 128
    layers: tuple[str, ...] = ()  # module names; default: every activation module
    n_projections: int = 500
    tv_weight: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)  # EOT: each step resizes the patch side by a factor in this range
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RobustDeployError(f"unknown patch method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 0.0 < self.patch_size < 1.0:
            raise RobustDeployError(f"--patch-size {self.patch_size:g} must be a fraction of the image area in (0, 1)")
        if self.steps < 1 or self.batch_size < 1 or self.n_projections < 1:
            raise RobustDeployError("--steps, batch size and projections must be at least 1")
        if self.lr <= 0 or self.tv_weight < 0:
            raise RobustDeployError("the patch learning rate must be > 0 and the TV weight >= 0")
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise RobustDeployError(f"--scale {self.scale[0]:g} {self.scale[1]:g} must be two factors 0 < min <= max")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PatchResult:
    patch: torch.Tensor  # (C, s, s) on the 8-bit grid
    config: PatchConfig
    layers: tuple[str, ...]
    losses: list[float] = field(default_factory=list)


def patch_side(patch_size: float, height: int, width: int) -> int:
    return max(1, min(height, width, round((patch_size * height * width) ** 0.5)))


def check_target(target: int, num_classes: int) -> None:
    if not 0 <= target < num_classes:
        raise RobustDeployError(f"--target-class {target} is out of range; the model has classes 0..{num_classes - 1}")


def random_positions(n: int, image_hw: tuple[int, int], side: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) top-left corners, uniform over all placements that keep the patch inside the image."""
    h, w = image_hw
    rows = torch.randint(0, h - side + 1, (n,), generator=generator)
    cols = torch.randint(0, w - side + 1, (n,), generator=generator)
    return torch.stack([rows, cols], 1)


def apply_patch(x: torch.Tensor, patch: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Paste `patch` (C, s, s) into each image at its (row, col); differentiable in the patch."""
    h, w = x.shape[-2:]
    side = patch.shape[-1]
    positions = positions.to(x.device)
    rel_r = torch.arange(h, device=x.device)[None, :] - positions[:, :1]  # (n, h)
    rel_c = torch.arange(w, device=x.device)[None, :] - positions[:, 1:]  # (n, w)
    inside = ((rel_r >= 0) & (rel_r < side))[:, :, None] & ((rel_c >= 0) & (rel_c < side))[:, None, :]
    tiled = patch[:, rel_r.clamp(0, side - 1)[:, :, None], rel_c.clamp(0, side - 1)[:, None, :]]  # (C, n, h, w)
    return torch.where(inside[:, None], tiled.transpose(0, 1), x)


def default_layers(model: nn.Module) -> tuple[str, ...]:
    """A timm model's stage outputs (its `feature_info`, as the seed pools each stage); else every activation."""
    for prefix, module in model.named_modules():
        info = getattr(module, "feature_info", None)
        if isinstance(info, list) and info and all(isinstance(i, dict) and "module" in i for i in info):
            return tuple(f"{prefix}.{i['module']}" if prefix else i["module"] for i in info)
    names = tuple(name for name, module in model.named_modules() if isinstance(module, FEATURE_TYPES))
    if not names:
        raise RobustDeployError("the model has no activation modules to take features from; pass --layers")
    return names


class FeatureHooks:
    """Forward hooks that record each layer's output pooled to (N, C): over space (N, C, H, W) or tokens (N, T, C)."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise RobustDeployError(f"no layer named {', '.join(missing)}; layers are: "
                                    f"{', '.join(n for n in modules if n)}")
        self.features: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            self.features[name] = output.mean((2, 3)) if output.dim() == 4 else output.mean(1) \
                if output.dim() == 3 else output.flatten(1)

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def sliced_wasserstein_sq(source: torch.Tensor, target: torch.Tensor, n_projections: int, seed: int) -> torch.Tensor:
    """SW_2^2 between two empirical distributions (rows), via POT with the torch backend."""
    import ot

    return ot.sliced_wasserstein_distance(source, target, n_projections=n_projections, p=2, seed=seed) ** 2


def scaled_side(side: int, scale: tuple[float, float], image_hw: tuple[int, int],
                generator: torch.Generator) -> int:
    """One EOT draw of the patch side: `side` times a factor uniform in `scale`, kept inside the image."""
    factor = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item()
    return max(1, min(*image_hw, round(side * factor)))


def resize_patch(patch: torch.Tensor, side: int) -> torch.Tensor:
    """The patch (C, s, s) resampled bilinearly to (C, side, side); differentiable, identity at its own side."""
    if side == patch.shape[-1]:
        return patch
    return F.interpolate(patch[None], size=(side, side), mode="bilinear", align_corners=False)[0]


def total_variation(patch: torch.Tensor) -> torch.Tensor:
    return (patch[..., 1:, :] - patch[..., :-1, :]).abs().mean() + (patch[..., :, 1:] - patch[..., :, :-1]).abs().mean()


def craft_patch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: PatchConfig,
                device: str = "cpu", front: nn.Module | None = None, start: torch.Tensor | None = None) -> PatchResult:
    """Optimise one patch over images x (labels y) of a [0, 1]-pixel classifier on `device` (where the caller
    placed the model, and `front`); returns it on the CPU, on the 8-bit grid. `front` (e.g. a defense's BPDA view)
    takes every image before the model, the target images' included: the adaptive attack on the defended model."""
    model = model.eval()
    front = (front if front is not None else nn.Identity()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        check_target(config.target, model(x[:1]).shape[1])
    source = x[y != config.target]
    target_images = x[y == config.target]
    if not len(source) or not len(target_images):
        raise RobustDeployError(f"crafting needs images of class {config.target} and of other classes")
    generator = torch.Generator().manual_seed(config.seed)
    side = patch_side(config.patch_size, *x.shape[-2:])
    noise = torch.rand(x.shape[1], side, side, generator=generator)  # drawn either way: later draws stay the same
    patch = (noise if start is None else start.clone()).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=config.lr)
    layers = config.layers or default_layers(model) if config.method == "sw" else ()
    hooks = FeatureHooks(model, layers)
    try:
        with torch.no_grad():
            model(front(target_images))
            target_features = {name: hooks.features[name].detach() for name in layers}
        losses = []
        for step, bar in progress(config.steps, f"patch ({config.method})"):
            idx = torch.randint(0, len(source), (min(config.batch_size, len(source)),), generator=generator)
            placed = resize_patch(patch, scaled_side(side, config.scale, x.shape[-2:], generator))
            positions = random_positions(len(idx), x.shape[-2:], placed.shape[-1], generator)
            logits = model(front(apply_patch(source[idx], placed, positions)))
            if config.method == "sw":
                loss = sum(sliced_wasserstein_sq(hooks.features[name], target_features[name],
                                                 config.n_projections, config.seed + step) for name in layers)
            else:
                loss = F.cross_entropy(logits, torch.full((len(idx),), config.target, device=logits.device))
            objective = loss + config.tv_weight * total_variation(patch)
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            with torch.no_grad():
                patch.clamp_(0.0, 1.0)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    finally:
        hooks.remove()
    final = (torch.round(patch.detach().cpu() * 255.0) / 255.0).clamp(0.0, 1.0)
    return PatchResult(final, config, tuple(layers), losses)
