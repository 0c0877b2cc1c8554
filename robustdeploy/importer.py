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
from robustdeploy.onnx_interface import MIN_OPSET, OnnxInterface, inspect_onnx, output_meaning
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
    class_map: Path | None = None
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


def read_classes(path: Path | None) -> tuple[str, ...] | None:
    """The model's class names, one a line from `path` (--classes); None without a file."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise RobustDeployError(f"--classes {path} does not exist; give a text file with one class name a line")
    names = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise RobustDeployError(f"--classes {path} names {len(names)} classes ({len(set(names))} distinct); give "
                                "the model's class names, one a line, in output order")
    return names


def read_class_map(path: Path | None) -> dict[str, str] | None:
    """--class-map: a JSON object from the data's class names to the model's (--classes)."""
    if path is None:
        return None
    import json

    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RobustDeployError(f"cannot read --class-map {path} ({type(exc).__name__}); give a JSON object "
                                '{"data class": "model class", ...}') from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise RobustDeployError(f"--class-map {path} is not a JSON object of class names; give "
                                '{"data class": "model class", ...}')
    return mapping


def labelled(config: ImportConfig) -> DataConfig:
    """The evaluation data with its labels mapped into the model's classes (--classes, --class-map), if given."""
    names, mapping = read_classes(config.classes_file), read_class_map(config.class_map)
    if mapping is not None and names is None:
        raise RobustDeployError("--class-map maps the data's classes into the model's: give them with --classes FILE")
    if names is None:
        return config.data
    return DataConfig(**{**config.data.to_dict(), "classes": names, "class_map": mapping})


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
    data = labelled(config)
    dataset = _dataset(data, pre)
    classes = dataset.classes
    net = fit_weights(create_net(config.arch, pre.input_size, len(classes)), state, config.arch)
    spec = ModelSpec(config.arch, pre.input_size, len(classes), pre.mean, pre.std)
    return bundle_from_module(net, dataset.test.x[:2], classes=classes, preprocessing=pre, out=config.out,
                              data=data, spec=spec, opset=config.opset, exporter=config.exporter,
                              tolerance=config.tolerance, variants=config.variants,
                              parity_limit=config.parity_limit, force=config.force)


def _converted(path: Path, preprocessing: Preprocessing, x: torch.Tensor, tolerance: ParityTolerance) -> dict:
    """The `gradients` manifest section: onnx2torch (the graph rewritten by convert.twin_graph, each rewrite
    recorded) with its measured parity against the untouched graph on ONNX Runtime, or `none` with the reason. A
    fixed-batch graph's twin first batches freely; where that breaks, it runs the fixed batch slice by slice."""
    import onnx

    from robustdeploy.convert import input_batch, twin_graph

    model = onnx.load(str(path))
    found: dict = {}
    for fixed in (False, True) if input_batch(model) is not None else (False,):
        twin = {"twin_batch": input_batch(model) if fixed else None,
                "rewrites": twin_graph(model, fixed_batch_twin=fixed)[1]}
        try:
            converted = convert_onnx(path, preprocessing, fixed_batch_twin=fixed)
            parity = check_parity(converted, path, x, tolerance, preprocessing=preprocessing, reference="onnx2torch")
        except RobustDeployError as exc:
            found = found or {"source": "none", "reason": str(exc)}
            continue
        except RuntimeError as exc:  # the converted twin fails to run at another batch size
            found = found or {"source": "none", "reason": f"the converted graph fails to run "
                                                          f"({str(exc).splitlines()[0][:160]})"}
            continue
        if parity.passed:
            return {"source": "onnx2torch", "parity": parity.to_dict(), **twin}
        found = found or {"source": "none", "reason": f"the converted graph breaks parity: {parity.summary()}",
                          "parity": parity.to_dict()}
    return found


UPGRADE_OPSET = 13  # where a graph older than ONNX Runtime runs (< MIN_OPSET) is upgraded to
RESERVED = {"manifest.json", "model.onnx", "model.fp16.onnx", "model.int8.onnx", "reference.safetensors"}


LEGACY_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow")


def numpy_broadcast(model) -> int:
    """Rewrite in place the opset < 7 `broadcast=1, axis=k` of element-wise nodes whose second input is a constant
    as that constant reshaped to broadcast numpy-style (trailing ones after axis k): the same values, the form ONNX's
    version converter upgrades reliably; returns how many nodes changed. Needs the first input's rank (value_info)."""
    from onnx import helper, numpy_helper

    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*model.graph.input, *model.graph.value_info]}
    constants = {t.name: t for t in model.graph.initializer}
    constants |= {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"
                  and n.attribute and n.attribute[0].name == "value"}
    reshaped: set[str] = set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        tensor = constants.get(node.input[1]) if node.op_type in LEGACY_BROADCAST else None
        if not attrs.get("broadcast") or tensor is None or node.input[0] not in ranks:
            continue
        dims = list(tensor.dims)
        axis = attrs.get("axis", ranks[node.input[0]] - len(dims))
        tensor.CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(tensor).reshape(dims + [1] * (ranks[node.input[0]] - axis - len(dims))),
            tensor.name or node.input[1]))
        kept = [a for a in node.attribute if a.name not in ("broadcast", "axis")]
        del node.attribute[:]
        node.attribute.extend(kept)
        reshaped.add(tensor.name)
    hints = [v for v in model.graph.value_info if v.name not in reshaped]  # their old shapes are stale now
    del model.graph.value_info[:]
    model.graph.value_info.extend(hints)
    return len(reshaped)


def stage_deployment(onnx_file: Path, interface: OnnxInterface, tmp: Path) -> list[dict]:
    """`tmp/model.onnx` (and its external-data files, same names): the user's file unchanged, or, where its opset is
    older than ONNX Runtime runs, upgraded by ONNX's version converter (exact operator adapters); the rewrites made."""
    import onnx
    from onnx import version_converter

    onnx_file = Path(onnx_file)
    clash = RESERVED.intersection(interface.external)
    if clash:
        raise RobustDeployError(f"{onnx_file.name} keeps weights in {sorted(clash)[0]!r}, a name the bundle uses for "
                                "its own files; re-save the external data under another name")
    if interface.opset >= MIN_OPSET:
        shutil.copyfile(onnx_file, tmp / "model.onnx")
        for name in interface.external:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(onnx_file.parent / name, tmp / name)
        return []
    original = onnx.load(str(onnx_file))
    broadcasts = numpy_broadcast(original)
    try:
        upgraded = version_converter.convert_version(original, UPGRADE_OPSET)
        del upgraded.graph.value_info[:]  # the old operators' shape hints, stale where adapters changed the nodes
        onnx.checker.check_model(upgraded, full_check=True)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError for an operator it cannot adapt
        raise RobustDeployError(f"{onnx_file.name} uses opset {interface.opset}, which ONNX Runtime does not run, and "
                                f"ONNX's version converter cannot upgrade it ({str(exc).splitlines()[0][:160]}); "
                                f"re-export it at opset {MIN_OPSET} or later") from None
    onnx.save(upgraded, str(tmp / "model.onnx"))
    return [{"rewrite": "opset", "detail": f"opset {interface.opset} upgraded to {UPGRADE_OPSET} (ONNX's version "
                                           f"converter; ONNX Runtime runs {MIN_OPSET} and later; {broadcasts} "
                                           "legacy broadcasts as reshaped constants, the graph's shape hints "
                                           "dropped)"}]


@exclusive_outputs
def import_onnx(config: ImportConfig, onnx_file: Path) -> Bundle:
    """The user's ONNX file as the deployment, copied unchanged; gradients from `--arch/--weights` (parity measured
    between the two) or from onnx2torch (parity with ONNX Runtime measured), else a score-only bundle."""
    out = _check_out(config.out, config.force)
    if (config.arch is None) != (config.weights is None):
        raise RobustDeployError("give both --arch and --weights (the PyTorch source of the ONNX file), or neither")
    interface = inspect_onnx(onnx_file, min_opset=1)
    pre = config.preprocessing
    if interface.input_shape != pre.input_size:
        raise RobustDeployError(f"{Path(onnx_file).name} takes inputs of shape {list(interface.input_shape)}, the "
                                f"preprocessing says {list(pre.input_size)}; set --input-size "
                                f"{' '.join(map(str, interface.input_shape))}")
    state = read_state_dict(config.weights) if config.weights else None
    data = labelled(config)
    dataset = _dataset(data, pre)
    classes = dataset.classes
    test = dataset.test.head(config.parity_limit)
    spec = ModelSpec(config.arch or "onnx", pre.input_size, len(classes), pre.mean, pre.std)
    tmp = staging_dir(out)
    try:
        deployment_rewrites = stage_deployment(onnx_file, interface, tmp)
        runtime = OrtRuntime(RuntimeSpec("ort-cpu"), tmp / "model.onnx", preprocessing=pre)
        meaning = output_meaning(runtime.logits(test.x[:8]), len(classes), Path(onnx_file).name)
        if state is not None:
            net = fit_weights(create_net(config.arch, pre.input_size, len(classes)), state, config.arch)
            model = Classifier(net, pre.mean, pre.std).eval()
            atomic_write_tensors(tmp / "reference.safetensors", model.state_dict())
            reference, gradients = "reference.safetensors", {"source": "spec"}
        else:
            reference, gradients = "model.onnx", _converted(tmp / "model.onnx", pre, test.x, config.tolerance)
            model = OnnxScores(tmp / "model.onnx", pre) if gradients["source"] == "none" else \
                convert_onnx(tmp / "model.onnx", pre, fixed_batch_twin=gradients["twin_batch"] is not None)
        variants, failed, _ = build_variants(model, tmp, test.x, dataset.train.x, config.variants, config.tolerance,
                                             interface.input_name, pre, REFERENCE_NAMES[gradients["source"]])
        manifest = bundle_manifest(
            tmp, name=out.name, spec=spec, classes=classes, variants=variants, reference=reference,
            data=dataset_record(data, pre, len(test)), input_name=interface.input_name,
            output_name=interface.output_name, meaning=meaning, batch=interface.batch,
            opset=UPGRADE_OPSET if deployment_rewrites else interface.opset, exporter="user",
            preprocessing=pre.to_dict(), gradients=gradients,
            source={"kind": "onnx", "file": Path(onnx_file).name, "sha256": sha256_file(Path(onnx_file)),
                    "input_dtype": interface.input_dtype, "opset": interface.opset, "batch": interface.batch,
                    "rewrites": deployment_rewrites,
                    "external": {name: sha256_file(tmp / name) for name in interface.external}})
        manifest["files"] |= manifest["source"]["external"]
        return finish_bundle(tmp, out, manifest, failed)
    except BaseException as exc:
        discard_staging(tmp, out, exc)
        raise
