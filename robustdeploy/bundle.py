"""Reading and verifying a deployment bundle: a security boundary, since bundles may come from others.

Checks: manifest format, SHA-256 of every listed file, no symlinks, ONNX external data that stays inside
the bundle folder, and versions of onnx/torch without the known model-loading CVEs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import torch

from robustdeploy.data import DataConfig
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import read_document, sha256_file
from robustdeploy.memory import MAX_INPUT
from robustdeploy.models import ModelSpec, load_weights
from robustdeploy.onnx_files import _inside, _tensors_with_external_data
from robustdeploy.preprocess import Preprocessing

BUNDLE_FORMAT = "robustdeploy-bundle/1"
MANIFEST = "manifest.json"
# onnx < 1.17: CVE-2024-5187 / CVE-2024-27318 (external-data path traversal);
# torch < 2.6: CVE-2025-32434 (torch.load weights_only bypass).
MIN_VERSIONS = {"onnx": (1, 17), "torch": (2, 6)}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_versions() -> None:
    """Refuse to load models with onnx/torch versions that have known model-loading CVEs."""
    import onnx
    import torch

    for name, module in (("onnx", onnx), ("torch", torch)):
        if _version_tuple(module.__version__) < MIN_VERSIONS[name]:
            need = ".".join(map(str, MIN_VERSIONS[name]))
            raise RobustDeployError(f"{name} {module.__version__} has known model-loading CVEs; "
                                    f"upgrade to {name}>={need}")


def check_input(shape: object, where: str) -> tuple[int, int, int]:
    """A declared (C, H, W) input: positive integers, 1 to 4 channels, no absurd size (refused before any
    allocation)."""
    if not (isinstance(shape, list | tuple) and len(shape) == 3 and all(type(d) is int and d > 0 for d in shape)):
        raise RobustDeployError(f"{where} declares the input {shape!r}; expected (channels, height, width)")
    if shape[0] > 4 or shape[0] * shape[1] * shape[2] > MAX_INPUT:
        raise RobustDeployError(f"{where} declares an input of {shape[0]}x{shape[1]}x{shape[2]}, beyond "
                                f"{MAX_INPUT:,} values or 4 channels; refusing it")
    return tuple(shape)  # type: ignore[return-value]


def check_onnx_file(path: Path, root: Path, input_shape: tuple[int, int, int] | None = None) -> list[str]:
    """Parse an ONNX file without its external data; return the external files it needs (all inside root).
    With `input_shape`, the graph's declared input must be (batch, *input_shape)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise RobustDeployError(f"{path} is not a valid ONNX file ({type(exc).__name__}); re-export it") from None
    if not model.graph.node:
        raise RobustDeployError(f"{path} is not a valid ONNX file (empty graph); re-export it")
    if input_shape is not None:
        dims = [d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
        if len(dims) != 3 or any(d is not None and d != s for d, s in zip(dims, input_shape)):
            raise RobustDeployError(f"{path.name} takes inputs of shape {dims}, the manifest declares "
                                    f"{list(input_shape)}; re-export the bundle")
    external = []
    for tensor in _tensors_with_external_data(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            _inside(root, location)
            external.append(location)
    return external


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def defense(self) -> str:
        """The training-side defense the model was trained with (`none` for standard training)."""
        return self.manifest.get("run", {}).get("train", {}).get("defense", "none")

    @cached_property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.manifest["model"])

    @property
    def data(self) -> DataConfig:
        known = {f.name for f in fields(DataConfig)}
        return DataConfig(**{k: v for k, v in self.manifest["data"].items() if k in known})

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["input"]["shape"][1:])  # type: ignore[return-value]

    @property
    def graph_batch(self) -> int | None:
        """The deployment graph's fixed batch size (None: dynamic); its runtimes feed it that many samples a run."""
        return self.manifest["input"]["shape"][0]

    @property
    def variants(self) -> dict:
        return self.manifest["variants"]

    def variant_path(self, variant: str) -> Path:
        if variant not in self.variants:
            have = ", ".join(sorted(self.variants))
            fix = f"re-export with --precision {variant}" if variant in ("fp16", "int8") else "use one of those"
            raise RobustDeployError(f"bundle {self.name!r} has no {variant!r} variant (has {have}); {fix}")
        return self.path / self.variants[variant]["file"]

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become the pixels the runtimes receive (manifest `preprocessing`; older bundles: the input
        shape with normalisation inside the graph)."""
        if "preprocessing" in self.manifest:
            return Preprocessing.from_dict(self.manifest["preprocessing"])
        return Preprocessing(self.input_shape, self.spec.mean, self.spec.std)

    @property
    def gradients(self) -> str:
        """Where the PyTorch graph comes from (manifest `gradients.source`): `spec` (rebuilt from the model spec and
        safetensors weights), `onnx2torch` (converted from the ONNX reference file) or `none` (score-only)."""
        return self.manifest.get("gradients", {}).get("source", "spec")

    @property
    def score_only(self) -> bool:
        return self.gradients == "none"

    def reference_model(self) -> torch.nn.Module:
        """The PyTorch graph taking [0, 1] pixels: rebuilt from spec + weights, converted from ONNX, or (score-only
        bundles) the ONNX graph on ONNX Runtime CPU, which gives scores but no gradients."""
        reference = self.path / self.manifest["reference"]
        if self.gradients == "spec":
            return load_weights(self.spec, reference)
        from robustdeploy.convert import OnnxScores, convert_onnx

        if self.score_only:
            return OnnxScores(reference, self.preprocessing)
        fixed = self.manifest["gradients"].get("twin_batch") is not None  # the twin runs the fixed batch in slices
        return convert_onnx(reference, self.preprocessing, fixed_batch_twin=fixed)


def load_bundle(path: Path) -> Bundle:
    """Open and verify a bundle folder; any problem is one RobustDeployError line."""
    check_versions()
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise RobustDeployError(f"bundle {path} not found; create it with `robustdeploy export RUN_DIR`")
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise RobustDeployError(f"{path} has no {MANIFEST}; it is not a robustdeploy bundle (re-export it)")
    manifest = read_document(manifest_path, BUNDLE_FORMAT, "re-export the bundle")  # schema-checked
    input_shape = check_input(manifest["input"]["shape"][1:], f"{manifest_path}")
    spec = manifest["model"]
    if spec["input_shape"] != list(input_shape):
        raise RobustDeployError(f"{manifest_path}: the model's input_shape disagrees with the input "
                                f"{list(input_shape)}; re-export the bundle")
    if len(manifest["classes"]) != spec["num_classes"]:
        raise RobustDeployError(f"{manifest_path} names {len(manifest['classes'])} classes for a model with "
                                f"{spec['num_classes']} outputs; re-export the bundle")
    files: dict = manifest["files"]
    for relative, digest in files.items():
        file = _inside(path, relative)
        if not file.is_file():
            raise RobustDeployError(f"bundle file {relative} is missing; re-export the bundle")
        if sha256_file(file) != digest:
            raise RobustDeployError(f"bundle file {relative} does not match its SHA-256 in the manifest "
                                    "(modified or corrupt); re-export the bundle")
    for variant in manifest["variants"].values():
        if variant["file"] not in files:
            raise RobustDeployError(f"variant file {variant['file']} is not hashed in the manifest; refusing it")
        for external in check_onnx_file(path / variant["file"], path, input_shape):
            if external not in files:
                raise RobustDeployError(f"external data {external} is not hashed in the manifest; refusing it")
    if manifest["reference"] not in files:
        raise RobustDeployError("the reference weights are not hashed in the manifest; refusing them")
    return Bundle(path, manifest)
