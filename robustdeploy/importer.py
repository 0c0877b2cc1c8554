"""Bring your own model: bundles from a PyTorch module (a timm / torchvision / built-in architecture with the user's
weights, or any nn.Module) or from an ONNX file that already runs in production, exported, parity-checked and hashed
exactly like a trained model's bundle (robustdeploy.export)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustdeploy.bundle import Bundle
from robustdeploy.convert import OnnxScores, convert_onnx
from robustdeploy.data import DataConfig, Dataset, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.export import (
    build_variants,
    bundle_manifest,
    check_parity,
    export_onnx,
    finish_bundle,
)
from robustdeploy.io import (
    atomic_write_tensors,
    check_output_dir,
    discard_staging,
    exclusive_outputs,
    sha256_file,
    staging_dir,
)
from robustdeploy.models import Classifier, ModelSpec, create_net
from robustdeploy.onnx_interface import inspect_onnx, output_meaning
from robustdeploy.parity import ParityTolerance
from robustdeploy.preprocess import Preprocessing
from robustdeploy.runtimes.base import RuntimeSpec
from robustdeploy.runtimes.ort import OrtRuntime
from robustdeploy.variants import VariantConfig
from robustdeploy.weights import fit_weights, read_state_dict

REFERENCE_NAMES = {"spec": "torch", "onnx2torch": "onnx2torch", "none": "ort-cpu (the ONNX graph itself)"}


@dataclass(frozen=True)
class ImportConfig:
    """What every import needs: where to write, the data (its `preprocessing` is the model's), and the export knobs."""

    out: Path
    data: DataConfig
    classes_file: Path | None = None
    arch: str | None = None
    weights: Path | None = None
    opset: int = 18
    exporter: str = "dynamo"
    tolerance: ParityTolerance = field(default_factory=ParityTolerance)
    variants: VariantConfig = field(default_factory=VariantConfig)
    parity_limit: int | None = None
    force: bool = False

    @property
    def preprocessing(self) -> Preprocessing:
        if self.data.preprocessing is None:
            raise RobustDeployError("an import needs the model's preprocessing; give --input-size C H W")
        return self.data.preprocessing


def _check_out(out: Path, force: bool) -> Path:
    out = Path(out)
    check_output_dir(out, "--out", force, "pass --force to replace it or choose --out")
    return out


def _dataset(data: DataConfig, preprocessing: Preprocessing) -> Dataset:
    dataset = load_dataset(data)
    if dataset.input_shape != preprocessing.input_size:
        raise RobustDeployError(f"dataset {data.name!r} gives images of shape {list(dataset.input_shape)}, the "
                                f"preprocessing says {list(preprocessing.input_size)}; fix --input-size (or use "
                                "--dataset imagefolder, which resizes and crops to it)")
    return dataset


def read_classes(path: Path | None, dataset: Dataset) -> tuple[str, ...]:
    """Class names: one a line from `path`, else the dataset's (an image folder's sub-folder names)."""
    if path is None:
        return dataset.classes
    if not Path(path).is_file():
        raise RobustDeployError(f"--classes {path} does not exist; give a text file with one class name a line")
    names = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    if len(names) != len(dataset.classes):
        raise RobustDeployError(f"--classes {path} names {len(names)} classes, the dataset has "
                                f"{len(dataset.classes)}; give one name per class, in label order")
    return names


@exclusive_outputs
def bundle_from_module(model: torch.nn.Module, example_input: torch.Tensor, *, classes: tuple[str, ...] | None = None,
                       preprocessing: Preprocessing, out: Path, data: DataConfig, spec: ModelSpec | None = None,
                       opset: int = 18, exporter: str = "dynamo", tolerance: ParityTolerance | None = None,
                       variants: VariantConfig | None = None, parity_limit: int | None = None,
                       force: bool = False) -> Bundle:
    """A verified bundle from any `model` that takes inputs like `example_input` (normalised by `preprocessing`, whose
    mean/std go inside the exported graph) and returns one score per class; `data` is the evaluation data.

    With `spec` (a registered architecture) the reference graph is rebuilt from safetensors weights; otherwise it is
    the exported ONNX graph converted back with onnx2torch, its parity with ONNX Runtime measured and recorded."""
    out = _check_out(out, force)
    if tuple(example_input.shape[1:]) != preprocessing.input_size:
        raise RobustDeployError(f"the example input has shape {list(example_input.shape)}, the preprocessing says "
                                f"(N, {', '.join(map(str, preprocessing.input_size))}); make them agree")
    if preprocessing.normalisation != "in-graph":
        raise RobustDeployError("a module is exported with its normalisation inside the graph; use "
                                "normalisation='in-graph'")
    graph = Classifier(model, preprocessing.mean, preprocessing.std).eval()
    with torch.no_grad():
        scores = graph(example_input.float())
    dataset = _dataset(DataConfig(**{**data.to_dict(), "preprocessing": preprocessing}), preprocessing)
    classes = tuple(classes) if classes is not None else dataset.classes
    output_meaning(scores, len(classes), "the model")
    spec = spec or ModelSpec("module", preprocessing.input_size, len(classes), preprocessing.mean, preprocessing.std)
    test = dataset.test.head(parity_limit)
    tmp = staging_dir(out)
    try:
        export_onnx(graph, preprocessing.input_size, tmp / "model.onnx", opset, exporter)
        if spec.arch != "module":
            atomic_write_tensors(tmp / "reference.safetensors", graph.state_dict())
            reference, gradients = "reference.safetensors", {"source": "spec"}
        else:
            reference, gradients = "model.onnx", _converted(tmp / "model.onnx", preprocessing, test.x,
                                                            tolerance or ParityTolerance())
            if gradients["source"] == "none":
                raise RobustDeployError(f"the exported graph cannot serve as the gradient source "
                                        f"({gradients['reason']}); import it with --arch and --weights instead")
        variant_entries, failed, _ = build_variants(graph, tmp, test.x, dataset.train.x, variants or VariantConfig(),
                                                    tolerance or ParityTolerance())
        manifest = bundle_manifest(
            tmp, name=out.name, spec=spec, classes=classes, variants=variant_entries, reference=reference,
            data=dataset_record(data, preprocessing, len(test)), opset=opset, exporter=exporter,
            preprocessing=preprocessing.to_dict(), gradients=gradients, source={"kind": "torch", "arch": spec.arch})
        return finish_bundle(tmp, out, manifest, failed)
    except BaseException as exc:
        discard_staging(tmp, out, exc)
        raise


def dataset_record(data: DataConfig, preprocessing: Preprocessing, samples: int) -> dict:
    """The manifest's `data`: how the evaluation images load, through the model's preprocessing."""
    return DataConfig(**{**data.to_dict(), "preprocessing": preprocessing}).to_dict() | {"split": "test",
                                                                                         "samples": samples}


@exclusive_outputs
def import_torch(config: ImportConfig) -> Bundle:
    """`--arch` (timm:NAME, tv:NAME or built-in) with the user's `--weights`, exported like a trained model."""
    if config.arch is None or config.weights is None:
        raise RobustDeployError("import torch needs --arch (timm:NAME, tv:NAME or a built-in) and --weights FILE")
    _check_out(config.out, config.force)
    pre = config.preprocessing
    state = read_state_dict(config.weights)
    dataset = _dataset(config.data, pre)
    classes = read_classes(config.classes_file, dataset)
    net = fit_weights(create_net(config.arch, pre.input_size, len(classes)), state, config.arch)
    spec = ModelSpec(config.arch, pre.input_size, len(classes), pre.mean, pre.std)
    return bundle_from_module(net, dataset.test.x[:2], classes=classes, preprocessing=pre, out=config.out,
                              data=config.data, spec=spec, opset=config.opset, exporter=config.exporter,
                              tolerance=config.tolerance, variants=config.variants,
                              parity_limit=config.parity_limit, force=config.force)


def _converted(path: Path, preprocessing: Preprocessing, x: torch.Tensor, tolerance: ParityTolerance) -> dict:
    """The `gradients` manifest section: onnx2torch with its measured parity, or `none` with the reason."""
    try:
        converted = convert_onnx(path, preprocessing)
        parity = check_parity(converted, path, x, tolerance, preprocessing=preprocessing, reference="onnx2torch")
    except RobustDeployError as exc:
        return {"source": "none", "reason": str(exc)}
    if not parity.passed:
        return {"source": "none", "reason": f"the converted graph breaks parity: {parity.summary()}",
                "parity": parity.to_dict()}
    return {"source": "onnx2torch", "parity": parity.to_dict()}


@exclusive_outputs
def import_onnx(config: ImportConfig, onnx_file: Path) -> Bundle:
    """The user's ONNX file as the deployment, copied unchanged; gradients from `--arch/--weights` (parity measured
    between the two) or from onnx2torch (parity with ONNX Runtime measured), else a score-only bundle."""
    out = _check_out(config.out, config.force)
    if (config.arch is None) != (config.weights is None):
        raise RobustDeployError("give both --arch and --weights (the PyTorch source of the ONNX file), or neither")
    interface = inspect_onnx(onnx_file)
    pre = config.preprocessing
    if interface.input_shape != pre.input_size:
        raise RobustDeployError(f"{Path(onnx_file).name} takes inputs of shape {list(interface.input_shape)}, the "
                                f"preprocessing says {list(pre.input_size)}; set --input-size "
                                f"{' '.join(map(str, interface.input_shape))}")
    state = read_state_dict(config.weights) if config.weights else None
    dataset = _dataset(config.data, pre)
    classes = read_classes(config.classes_file, dataset)
    test = dataset.test.head(config.parity_limit)
    runtime = OrtRuntime(RuntimeSpec("ort-cpu"), Path(onnx_file), preprocessing=pre)
    meaning = output_meaning(runtime.logits(test.x[:8]), len(classes), Path(onnx_file).name)
    spec = ModelSpec(config.arch or "onnx", pre.input_size, len(classes), pre.mean, pre.std)
    tmp = staging_dir(out)
    try:
        shutil.copyfile(onnx_file, tmp / "model.onnx")
        if state is not None:
            net = fit_weights(create_net(config.arch, pre.input_size, len(classes)), state, config.arch)
            model = Classifier(net, pre.mean, pre.std).eval()
            atomic_write_tensors(tmp / "reference.safetensors", model.state_dict())
            reference, gradients = "reference.safetensors", {"source": "spec"}
        else:
            reference, gradients = "model.onnx", _converted(tmp / "model.onnx", pre, test.x, config.tolerance)
            model = OnnxScores(tmp / "model.onnx", pre) if gradients["source"] == "none" else \
                convert_onnx(tmp / "model.onnx", pre)
        variants, failed, _ = build_variants(model, tmp, test.x, dataset.train.x, config.variants, config.tolerance,
                                             interface.input_name, pre, REFERENCE_NAMES[gradients["source"]])
        manifest = bundle_manifest(
            tmp, name=out.name, spec=spec, classes=classes, variants=variants, reference=reference,
            data=dataset_record(config.data, pre, len(test)), input_name=interface.input_name,
            output_name=interface.output_name, meaning=meaning, opset=interface.opset, exporter="user",
            preprocessing=pre.to_dict(), gradients=gradients,
            source={"kind": "onnx", "file": Path(onnx_file).name, "sha256": sha256_file(Path(onnx_file)),
                    "input_dtype": interface.input_dtype})
        return finish_bundle(tmp, out, manifest, failed)
    except BaseException as exc:
        discard_staging(tmp, out, exc)
        raise
