"""The poison-set format: 8-bit poisoned training images in safetensors shards + a JSON manifest.

`poisons/NAME/manifest.json` records the recipe, the dataset (config, image shape, SHA-256 of the clean training
split), the surrogates and the shards; each shard holds `x` (uint8, N x C x H x W) and `index` (int64: the rows
of the clean training split they replace). Everything is written in a staging folder and renamed into place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from robustdeploy.data import DataConfig, Dataset, Split
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import (
    atomic_write_bytes,
    atomic_write_json,
    discard_staging,
    read_document,
    sha256_file,
    staging_dir,
    versions,
)

POISON_FORMAT = "robustdeploy-poison/1"
MANIFEST = "manifest.json"
SHARD_SIZE = 4096
NAMES = ("clean", "perturbation", "poisoned")  # the columns of a poison set's grid.png


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def realise(clean: torch.Tensor, poisoned: torch.Tensor, eps: float) -> torch.Tensor:
    """`poisoned` on the 8-bit grid, each pixel within floor(255 eps) levels of the (8-bit) clean pixel: the stored
    image respects the L-inf budget exactly."""
    base = (clean * 255).round()
    budget = float(int(eps * 255 + 1e-6))
    levels = (poisoned * 255).round().clamp(base - budget, base + budget).clamp(0, 255)
    return levels.to(torch.uint8)


def split_digest(split: Split) -> str:
    """SHA-256 of a split's 8-bit pixels and labels: a poison set only fits the split it was made from."""
    digest = hashlib.sha256()
    digest.update(to_uint8(split.x).numpy().tobytes())
    digest.update(split.y.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PoisonSet:
    """An opened, verified poison set: `x` (float in [0, 1]) replaces `train[index]`."""

    path: Path
    manifest: dict
    x: torch.Tensor
    index: torch.Tensor

    @property
    def data(self) -> DataConfig:
        return DataConfig(**self.manifest["data"])

    @property
    def targeted(self) -> bool:
        return self.manifest.get("target") is not None

    @property
    def surrogates(self) -> list[dict]:
        return self.manifest["surrogates"]

    def check_fits(self, config: DataConfig, data: Dataset) -> None:
        """Refuse, in one line, a dataset other than the one the set was made for."""
        made = self.data
        if made.name != config.name:
            raise RobustDeployError(f"poison set {self.path} was made for dataset {made.name!r}, not "
                                    f"{config.name!r}; use --dataset {made.name} or generate a set for {config.name}")
        shape = tuple(self.manifest["input_shape"])
        if shape != data.input_shape:
            raise RobustDeployError(f"poison set {self.path} holds images of shape {shape}, the dataset gives "
                                    f"{data.input_shape}; use --image-size {shape[-1]} or regenerate the set")
        if split_digest(data.train) != self.manifest["train_sha256"]:
            raise RobustDeployError(f"poison set {self.path} was made from another training split (seed "
                                    f"{made.seed}, val fraction {made.val_fraction}); train with the same --seed "
                                    "and --val-fraction")


def write_poison_set(out: Path, manifest: dict, x: torch.Tensor, index: torch.Tensor, data: Dataset,
                     extra_files: dict[str, Callable[[Path], object]] | None = None,
                     surrogates: Path | None = None) -> Path:
    """Write `out` atomically: shards of `x` (float, realised already) with their `index`, manifest, extras.

    `extra_files` maps a relative name to a function writing it into the staging folder (a figure);
    `surrogates`, a folder of surrogate runs, moves in as `surrogates/`."""
    out = Path(out)  # held by the caller since before any work (surrogates.staging_for)
    tmp = staging_dir(out)
    try:
        shards = []
        for start in range(0, len(index), SHARD_SIZE):
            name = f"shard-{start // SHARD_SIZE:05d}.safetensors"
            atomic_write_bytes(tmp / name, save({"x": to_uint8(x[start : start + SHARD_SIZE]).contiguous(),
                                                 "index": index[start : start + SHARD_SIZE].to(torch.int64)
                                                 .contiguous()}))
            shards.append({"file": name, "count": len(index[start : start + SHARD_SIZE]),
                           "sha256": sha256_file(tmp / name)})
        for name, write in (extra_files or {}).items():
            write(tmp / name)
        if surrogates is not None and surrogates.is_dir():
            surrogates.rename(tmp / "surrogates")
        full = {"format": POISON_FORMAT, **manifest,
                "input_shape": list(data.input_shape), "classes": list(data.classes),
                "train_samples": len(data.train), "train_sha256": split_digest(data.train),
                "poisoned": len(index), "shards": shards,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions()}
        atomic_write_json(tmp / MANIFEST, full)
        tmp.rename(out)
    except BaseException as exc:
        discard_staging(tmp, out, exc)
        raise
    return out


def read_shard(file: Path, count: int, input_shape: list[int]) -> dict[str, torch.Tensor]:
    """A shard's tensors, checked against the manifest: `x` uint8 images of `input_shape`, `index` int64, `count`
    rows each; anything else (not safetensors, a tensor missing, another dtype or shape) is one line naming it."""
    fix = "regenerate the poison set"
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # safetensors reports a damaged file in several types
        raise RobustDeployError(f"poison shard {file} is not a readable safetensors file "
                                f"({str(exc).splitlines()[0][:120]}); {fix}") from None
    expected = {"x": (torch.uint8, [count, *input_shape]), "index": (torch.int64, [count])}
    for name, (dtype, shape) in expected.items():
        if name not in tensors:
            raise RobustDeployError(f"poison shard {file} lacks its {name!r} tensor; {fix}")
        found = tensors[name]
        if found.dtype != dtype:
            raise RobustDeployError(f"poison shard {file}: {name!r} is {str(found.dtype).removeprefix('torch.')}, "
                                    f"expected {str(dtype).removeprefix('torch.')}; {fix}")
        if list(found.shape) != shape:
            raise RobustDeployError(f"poison shard {file}: {name!r} has shape {list(found.shape)}, the manifest "
                                    f"says {shape}; {fix}")
    if set(tensors) - set(expected):
        raise RobustDeployError(f"poison shard {file} holds unexpected tensors {sorted(set(tensors) - set(expected))}"
                                f"; {fix}")
    return tensors


def load_poison_set(path: Path) -> PoisonSet:
    """Open and verify a poison set (format, shard hashes, shapes); any problem is one error line."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise RobustDeployError(f"{path} is not a poison set (no {MANIFEST}); make one with `robustdeploy poison "
                                "generate` or `poison craft`")
    manifest = read_document(path / MANIFEST, POISON_FORMAT, "regenerate the poison set")
    if sum(shard["count"] for shard in manifest["shards"]) != manifest["poisoned"]:
        raise RobustDeployError(f"poison set {path}: its shards hold {sum(s['count'] for s in manifest['shards'])} "
                                f"images, its manifest says {manifest['poisoned']} were poisoned; regenerate it")
    xs, indices = [], []
    for shard in manifest["shards"]:
        file = path / Path(shard["file"]).name
        if not file.is_file() or sha256_file(file) != shard["sha256"]:
            raise RobustDeployError(f"poison shard {file} is missing or does not match its SHA-256; regenerate "
                                    "the poison set")
        tensors = read_shard(file, shard["count"], manifest["input_shape"])
        xs.append(tensors["x"])
        indices.append(tensors["index"])
    x = torch.cat(xs).float().div_(255.0) if xs else torch.empty(0, *manifest["input_shape"])
    index = torch.cat(indices) if indices else torch.empty(0, dtype=torch.int64)
    if tuple(x.shape[1:]) != tuple(manifest["input_shape"]) or len(index) != len(x):
        raise RobustDeployError(f"poison set {path} holds images that disagree with its manifest; regenerate it")
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= manifest["train_samples"]):
        raise RobustDeployError(f"poison set {path} indexes outside the training split; regenerate it")
    return PoisonSet(path, manifest, x, index)
