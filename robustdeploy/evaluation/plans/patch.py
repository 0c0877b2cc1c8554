"""`patch`: a universal patch (seed 004) crafted on a source bundle and scored on torch and ort-cpu of it and of
transfer bundles (optionally behind LGS): tSuc, the share of patched non-target images classified as the
target, and the fooling rate, from stored 8-bit patched images. Behind LGS each model faces the oblivious patch
(crafted without LGS), an adaptive one (crafted through LGS on the source, BPDA) and, per image, the worse of the
two; every row names its threat model."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from robustdeploy import devices
from robustdeploy.attacks.ot_patch import PatchConfig, apply_patch, check_target, craft_patch, random_positions
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.data import load_dataset
from robustdeploy.defenses.base import Bpda
from robustdeploy.defenses.lgs import LocalGradientSmoothing
from robustdeploy.errors import CheckFailed, RobustDeployError
from robustdeploy.evaluation.checks import adaptive_patch_weaker
from robustdeploy.evaluation.classify import new_result
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.score import percent
from robustdeploy.evaluation.session import SessionConfig, open_session
from robustdeploy.figures import write_png
from robustdeploy.io import check_output, exclusive_outputs
from robustdeploy.models import Composite
from robustdeploy.parity import ParityTolerance
from robustdeploy.runtimes import Runtime, RuntimeSpec, create_runtime
from robustdeploy.runtimes.ort import OrtRuntime
from robustdeploy.runtimes.torch import TorchRuntime

RUNTIMES = ("torch", "ort-cpu")
PATCHED = "patch/torch/patched"
ADAPTIVE = "patch/torch+lgs/patched"  # crafted through LGS (BPDA) on the source's torch graph


@dataclass(frozen=True)
class PatchEvalConfig:
    source: Path
    patch: PatchConfig
    transfer: tuple[Path, ...] = ()
    lgs: bool = False
    limit: int | None = None
    seed: int = 0
    data_root: str | None = None
    out: Path | None = None
    device: str = "cpu"


def lgs_runtimes(bundle: Bundle, probe: torch.Tensor, device: str = "cpu") -> list[Runtime]:
    """torch and ort-cpu runtimes of LGS + the bundle's classifier; the ONNX graph is parity-checked."""
    from robustdeploy.export import check_parity, export_onnx

    model = devices.place(Composite(LocalGradientSmoothing.for_size(bundle.input_shape[-1]), bundle.reference_model()),
                          "cpu")  # parity is checked on the CPU; the torch runtime then places it on `device`
    with tempfile.TemporaryDirectory() as tmp:  # the session holds the graph in memory once opened
        path = Path(tmp) / f"{bundle.name}-lgs.onnx"
        export_onnx(model, bundle.input_shape, path, opset=18, exporter="dynamo")
        report = check_parity(model, path, probe, ParityTolerance(), label="ort-cpu")
        if not report.passed:
            raise CheckFailed(f"LGS + {bundle.name} ONNX graph fails parity: {report.summary()}")
        return [TorchRuntime(RuntimeSpec("torch", "fp32"), model, device),
                OrtRuntime(RuntimeSpec("ort-cpu", "fp32"), path)]


def patch_runners(result: Result, probe: torch.Tensor, device: str = "cpu") -> dict[str, Runtime]:
    """`bundle name/runtime` -> runtime for every model the patch is scored on (rebuilt from the result)."""
    found: dict[str, Runtime] = {}
    for path in result.extra["bundles"]:
        bundle = load_bundle(Path(path))
        found.update({f"{bundle.name}/{name}": create_runtime(bundle, name, device=device) for name in RUNTIMES})
        if result.extra["lgs"]:  # beside the bare model, so LGS's own cost on clean images shows
            found.update({f"{bundle.name}/{r.label}+lgs": r for r in lgs_runtimes(bundle, probe, device)})
    return found


def patch_cells(result: Result, stored: dict[str, torch.Tensor], runners: dict[str, Runtime],
                batch_size: int = 256) -> list[dict]:
    """Clean target rate, tSuc and fooling rate of every model x runtime on the stored patched images; behind LGS
    for the oblivious patch, the adaptive one and their per-image worst case."""
    target, y = result.extra["target"], stored["y"]
    bundle = next(iter(runners)).rsplit("/", 1)[0]  # the source bundle's runtimes come first
    source = f"{bundle}/torch"
    cells = []
    for name, runtime in runners.items():
        clean = runtime.predict(stored["x"], batch_size)
        row = {"runtime": name, "defense": "lgs" if name.endswith("+lgs") else "none", "samples": len(y),
               "clean_accuracy": percent(clean == y), "clean_target_rate": percent(clean == target)}
        patched = {"patch": runtime.predict(stored[PATCHED], batch_size)}
        threats = {"patch": f"white-box on {source}" if name == source else f"transfer from {source}"}
        if row["defense"] == "lgs" and ADAPTIVE in stored:  # a result written before the adaptive patch has none
            oblivious = patched["patch"]
            adaptive = patched["adaptive"] = runtime.predict(stored[ADAPTIVE], batch_size)
            # per image the attacker's better label: the adaptive one where it hits the target or the oblivious one
            # fooled nothing, else the oblivious one (it fooled, and hit the target if either did)
            patched["worst case"] = torch.where((adaptive == target) | (oblivious == y), adaptive, oblivious)
            how = f"crafted on {source}" if name.startswith(f"{bundle}/") else f"transfer from {source}"
            threats = {"patch": f"oblivious: {how} without LGS", "adaptive": f"adaptive: BPDA through LGS, {how}",
                       "worst case": "per image, the worse of the two"}
        cells += [{**row, "attack": attack, "tsuc": percent(labels == target), "fooling_rate": percent(labels != y),
                   "threat": threats[attack]} for attack, labels in patched.items()]
    return cells


@exclusive_outputs
def evaluate_patch(config: PatchEvalConfig) -> tuple[Result, torch.Tensor]:
    """Craft on the source bundle's train split (PyTorch graph), score on every bundle x runtime; returns the patch."""
    session = open_session(SessionConfig(config.source, RUNTIMES, config.limit, seed=config.seed,
                                         data_root=config.data_root, device=config.device))
    source = session.bundle
    check_target(config.patch.target, len(source.classes))
    if config.lgs:
        LocalGradientSmoothing.for_size(source.input_shape[-1])  # refused on images too small for it, before crafting
    if config.out is not None:
        check_output(config.out, "--out")
    bundles = [source] + [load_bundle(path) for path in config.transfer]
    for other in bundles[1:]:
        if other.input_shape != source.input_shape or len(other.classes) != len(source.classes):
            raise RobustDeployError(f"transfer bundle {other.name!r} has input {other.input_shape} and "
                                    f"{len(other.classes)} classes; the source has {source.input_shape} and "
                                    f"{len(source.classes)}: train it on the same data")
    data_config = source.data if config.data_root is None else \
        type(source.data)(**{**source.data.to_dict(), "data_root": config.data_root})
    train = load_dataset(data_config).split("train")
    crafted = craft_patch(session.reference, train.x, train.y, config.patch, session.device)
    keep = session.test.y != config.patch.target
    x, y = session.test.x[keep], session.test.y[keep]
    generator = torch.Generator().manual_seed(config.seed)
    positions = random_positions(len(x), x.shape[-2:], crafted.patch.shape[-1], generator)
    stored = {"x": x, "y": y, PATCHED: apply_patch(x, crafted.patch, positions), "patch": crafted.patch}
    if config.lgs:  # the adaptive attack on the defended source, placed where the oblivious patch is
        front = session.place(Bpda(LocalGradientSmoothing.for_size(source.input_shape[-1])))
        adaptive = craft_patch(session.reference, train.x, train.y, config.patch, session.device, front,
                               crafted.patch).patch
        stored.update({ADAPTIVE: apply_patch(x, adaptive, positions), "patch+lgs": adaptive})
    result = new_result("patch", session, scorer="target")
    result.samples = len(x)
    result.attacks = [{"label": "patch", "name": config.patch.method, "params": config.patch.to_dict(),
                       "needs": "gradients"}]
    result.extra = {"target": config.patch.target, "lgs": config.lgs, "bundles": [str(b.path) for b in bundles],
                    "layers": list(crafted.layers), "losses": crafted.losses}
    result.cells = patch_cells(result, stored, patch_runners(result, x[:256], session.device))
    result.checks = [asdict(c) for c in [adaptive_patch_weaker(result.cells)] if c is not None]
    result.complete = True
    if config.out is not None:
        save_result(config.out, result, stored)
        pixels = (crafted.patch * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        write_png(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels),
                  Path(config.out).with_suffix(".patch.png"))
    return result, crafted.patch



