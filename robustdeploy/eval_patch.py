"""Craft a universal patch on a source bundle and score it on torch and ort-cpu of the source and transfer bundles.

tSuc (seed 004): fraction of patched test images, not of the target class, classified as the target.
Fooling rate: fraction of those patched images not classified as their true class. The same patched images
(random positions, fixed seed) are scored on every model and runtime; with `lgs`, Local Gradient Smoothing
sits in front of each model, on torch and in an exported, parity-checked LGS + classifier ONNX graph.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.attacks.ot_patch import PatchConfig, apply_patch, check_target, craft_patch, random_positions
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.data import load_dataset
from robustdeploy.defenses.lgs import Defended, LocalGradientSmoothing
from robustdeploy.errors import CheckFailed, RobustDeployError
from robustdeploy.io import atomic_write_bytes, atomic_write_json, versions
from robustdeploy.parity import ParityTolerance
from robustdeploy.runtimes import create_runtime
from robustdeploy.runtimes.base import RuntimeSpec
from robustdeploy.runtimes.ort import OrtRuntime

RUNTIMES = ("torch", "ort-cpu")


@dataclass(frozen=True)
class PatchEvalConfig:
    source: Path
    patch: PatchConfig
    transfer: tuple[Path, ...] = ()
    lgs: bool = False
    limit: int | None = None
    seed: int = 0
    out: Path | None = None


@dataclass
class PatchScore:
    bundle: str
    runtime: str
    defense: str
    samples: int
    clean_target_rate: float
    tsuc: float
    fooling_rate: float


@dataclass
class PatchEvalResult:
    config: dict
    layers: list[str]
    losses: list[float]
    scores: list[PatchScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"config": self.config, "layers": self.layers, "losses": self.losses,
                "scores": [asdict(s) for s in self.scores], "versions": versions()}


def lgs_runtimes(bundle: Bundle, folder: Path) -> list:
    """torch and ort-cpu runtimes of LGS + the bundle's classifier; the ONNX graph is parity-checked."""
    from robustdeploy.export import check_parity, export_onnx
    from robustdeploy.runtimes.torch import TorchRuntime

    model = Defended(LocalGradientSmoothing.for_size(bundle.input_shape[-1]), bundle.reference_model()).eval()
    path = folder / f"{bundle.name}-lgs.onnx"
    export_onnx(model, bundle.input_shape, path, opset=18, exporter="dynamo")
    probe = load_dataset(bundle.data).split("test").x[:256]
    report = check_parity(model, path, probe, ParityTolerance(), label="ort-cpu")
    if not report.passed:
        raise CheckFailed(f"LGS + {bundle.name} ONNX graph fails parity: {report.summary()}")
    return [TorchRuntime(RuntimeSpec("torch", "fp32"), model), OrtRuntime(RuntimeSpec("ort-cpu", "fp32"), path)]


def score(runtime, clean: torch.Tensor, patched: torch.Tensor, y: torch.Tensor, target: int) -> tuple:
    clean_pred, adv_pred = runtime.predict(clean), runtime.predict(patched)
    return (float((clean_pred == target).float().mean()), float((adv_pred == target).float().mean()),
            float((adv_pred != y).float().mean()))


def evaluate_patch(config: PatchEvalConfig) -> tuple[PatchEvalResult, torch.Tensor]:
    """Craft on the source bundle's train split (PyTorch graph), score on every bundle x runtime; returns the patch."""
    source = load_bundle(config.source)
    check_target(config.patch.target, len(source.classes))
    bundles = [source] + [load_bundle(path) for path in config.transfer]
    for other in bundles[1:]:
        if other.input_shape != source.input_shape or len(other.classes) != len(source.classes):
            raise RobustDeployError(f"transfer bundle {other.name!r} has input {other.input_shape} and "
                                    f"{len(other.classes)} classes; the source has {source.input_shape} and "
                                    f"{len(source.classes)}: train it on the same data")
    data = load_dataset(source.data)
    train = data.split("train")
    crafted = craft_patch(source.reference_model(), train.x, train.y, config.patch)
    test = data.split("test").head(config.limit)
    keep = test.y != config.patch.target
    x, y = test.x[keep], test.y[keep]
    generator = torch.Generator().manual_seed(config.seed)
    positions = random_positions(len(x), x.shape[-2:], crafted.patch.shape[-1], generator)
    patched = apply_patch(x, crafted.patch, positions)
    result = PatchEvalResult(config={"source": str(config.source), "transfer": [str(p) for p in config.transfer],
                                     "lgs": config.lgs, "limit": config.limit, "seed": config.seed,
                                     "patch": config.patch.to_dict()},
                             layers=list(crafted.layers), losses=crafted.losses)
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in bundles:
            runtimes = lgs_runtimes(bundle, Path(tmp)) if config.lgs else \
                [create_runtime(bundle, name) for name in RUNTIMES]
            for runtime in runtimes:
                rates = score(runtime, x, patched, y, config.patch.target)
                result.scores.append(PatchScore(bundle.name, runtime.label, "lgs" if config.lgs else "none",
                                                len(x), *rates))
    if config.out is not None:
        save_patch(crafted.patch, config.out)
        atomic_write_json(config.out, result.to_dict())
    return result, crafted.patch


def save_patch(patch: torch.Tensor, out: Path) -> None:
    """The patch as .safetensors (float pixels) and as an 8-bit PNG, next to the JSON result."""
    import io

    from PIL import Image
    from safetensors.torch import save

    atomic_write_bytes(out.with_suffix(".patch.safetensors"), save({"patch": patch.contiguous()}))
    pixels = (patch * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out.with_suffix(".patch.png"), buffer.getvalue())


def patch_table(result: PatchEvalResult) -> str:
    rows = [f"{'bundle':<20} {'runtime':<10} {'defense':<8} {'n':>5} {'clean->t':>9} {'tSuc':>7} {'fool':>7}"]
    for s in result.scores:
        rows.append(f"{s.bundle:<20} {s.runtime:<10} {s.defense:<8} {s.samples:>5} "
                    f"{100 * s.clean_target_rate:>8.1f}% {100 * s.tsuc:>6.1f}% {100 * s.fooling_rate:>6.1f}%")
    return "\n".join(rows)
