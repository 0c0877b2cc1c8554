"""One result shape for every kind of evaluation, one key scheme for stored examples (`[group:]attack/source/
eps=E` in the safetensors beside the JSON), one save and load; every cell re-scores from the stored sets."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from robustdeploy.errors import RobustDeployError
from robustdeploy.io import atomic_write_bytes, atomic_write_json, atomic_writer, read_document, versions

FORMAT = "robustdeploy-result/2"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Result:
    """Header (what was evaluated, how, with which software), the crafted sets, and the scored cells."""

    kind: str
    scorer: str
    bundle: str
    seed: int
    samples: int
    limit: int | None
    data: dict
    runtimes: list[dict]
    norm: str | None = None
    epsilons: list[float] = field(default_factory=list)
    attacks: list[dict] = field(default_factory=list)
    sets: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    adversarial_file: str | None = None
    figure: str | None = None
    complete: bool = False
    versions: dict = field(default_factory=versions)
    started: str = field(default_factory=_now)
    path: Path | None = field(default=None, repr=False, compare=False)  # where it was saved; not stored

    def to_dict(self) -> dict:
        return {"format": FORMAT, **{k: v for k, v in asdict(self).items() if k != "path"}}

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        return cls(**{k: v for k, v in data.items() if k != "format"})

    def cell(self, runtime: str, eps: float, attack: str | None = None) -> dict:
        """The cell of (runtime, eps) after `attack` (default: the whole cascade, i.e. the worst case)."""
        found = [c for c in self.cells if c["runtime"] == runtime and abs(c["eps"] - eps) < 1e-12
                 and (attack is None or c["attack"] == attack)]
        if not found:
            raise KeyError((runtime, eps, attack))
        return found[-1]

    def runtime_labels(self) -> list[str]:
        return [r["runtime"] for r in self.runtimes]


def adversarial_path(out: Path) -> Path:
    return Path(out).with_suffix(".adv.safetensors")


class Stored(Mapping):
    """A result's stored examples on disk: `stored[key]` reads one set (kept once read, like a dict); `rows(key)`
    reads it a window at a time and keeps nothing, so scoring a large result never holds a set whole."""

    WINDOW = 1024

    def __init__(self, path: Path) -> None:
        self.path, self._read = Path(path), {}
        with safe_open(str(self.path), "pt") as handle:
            self._keys = list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._read:
            if key not in self._keys:
                raise KeyError(key)
            with safe_open(str(self.path), "pt") as handle:
                self._read[key] = handle.get_tensor(key)
        return self._read[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def rows(self, key: str) -> Iterator[torch.Tensor]:
        if key in self._read:
            yield self._read[key]
            return
        with safe_open(str(self.path), "pt") as handle:
            part = handle.get_slice(key)
            for start in range(0, part.get_shape()[0], self.WINDOW):
                yield part[start : start + self.WINDOW]


def save_result(out: Path, result: Result, stored: Mapping[str, torch.Tensor] | None) -> None:
    """Examples first, then the JSON that points at them: whatever is on disk is re-scorable. `stored=None`: the
    examples are on disk already (`join_examples`)."""
    out = Path(out)
    result.path, result.adversarial_file = out, adversarial_path(out).name
    if stored is not None:
        atomic_write_bytes(adversarial_path(out), save({k: v.contiguous() for k, v in stored.items()}))
    atomic_write_json(out, result.to_dict())


def _header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and where its data starts."""
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        if size > Path(path).stat().st_size - 8:
            raise ValueError(f"its header claims {size} bytes, more than the file holds")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def join_examples(parts: list[Path], out: Path) -> None:
    """The stored examples of consecutive windows (safetensors files with the same keys) joined into the one file of
    the result at `out`, each set concatenated along its sample axis, streamed through a small buffer: the file
    format lays a tensor out row after row, so joining rows is joining bytes."""
    headers = [_header(p) for p in parts]
    first = headers[0][0]
    for (header, _), path in zip(headers, parts):
        if {k: (v["dtype"], v["shape"][1:]) for k, v in header.items()} != \
                {k: (v["dtype"], v["shape"][1:]) for k, v in first.items()}:
            raise RobustDeployError(f"{path} holds other sets than {parts[0]}; delete {parts[0].parent} and re-run")
    layout, offset = {}, 0
    for key, info in first.items():
        size = sum(h[key]["data_offsets"][1] - h[key]["data_offsets"][0] for h, _ in headers)
        rows = sum(h[key]["shape"][0] for h, _ in headers)
        layout[key] = {"dtype": info["dtype"], "shape": [rows, *info["shape"][1:]],
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(layout, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_writer(adversarial_path(out)) as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for key in layout:
            for (header, start), path in zip(headers, parts):
                begin, end = header[key]["data_offsets"]
                with open(path, "rb") as source:
                    source.seek(start + begin)
                    _copy(source, handle, end - begin)


def _copy(source, target, size: int, block: int = 1 << 24) -> None:
    while size > 0:
        chunk = source.read(min(block, size))
        if not chunk:
            raise RobustDeployError(f"{source.name} is truncated; delete it and re-run")
        target.write(chunk)
        size -= len(chunk)


def load_result(path: Path) -> tuple[Result, Stored]:
    """A result and its stored examples (read on demand); a damaged or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RobustDeployError(f"result {path} not found; give the JSON that `robustdeploy evaluate` wrote")
    data = read_document(path, FORMAT, "give a result written by this version of robustdeploy")
    try:
        result = Result.from_dict(data)
        check_examples(path.parent / result.adversarial_file, result)
        stored = Stored(path.parent / result.adversarial_file)
    except RobustDeployError:
        raise
    except Exception as exc:  # a hand-edited or truncated result: say so rather than guess
        raise RobustDeployError(f"cannot read result {path} or its examples ({exc}); re-run the evaluation") \
            from None
    return result, stored


FLOATS = ("F16", "BF16", "F32", "F64")


def check_examples(path: Path, result: Result) -> None:
    """The stored examples hold every set `result` names, each a float tensor with one row per sample and the
    samples' image shape, and int64 labels (from the file's header alone): a tampered, truncated or swapped file
    is one line naming the file and what is wrong."""
    fix = "re-run the evaluation (the stored examples were changed or replaced after it was written)"
    try:
        header = {key: (info["dtype"], list(info["shape"])) for key, info in _header(path)[0].items()}
    except FileNotFoundError:
        raise RobustDeployError(f"the stored examples {path} of the result are missing; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise RobustDeployError(f"{path} is not a readable safetensors file ({exc}); {fix}") from None

    def wrong(what: str) -> RobustDeployError:
        return RobustDeployError(f"{path}: {what}; {fix}")

    if "y" not in header:
        raise wrong("the labels 'y' are missing")
    dtype, shape = header["y"]
    if dtype != "I64" or len(shape) != 1:
        raise wrong(f"the labels 'y' are {dtype} of shape {shape}, expected I64 of shape [samples]")
    rows = shape[0]
    if result.complete and rows != result.samples:
        raise wrong(f"{rows} labels for a result over {result.samples} samples")
    image = header["x"][1][1:] if "x" in header else None
    for key in dict.fromkeys(["x", *(s["key"] for s in result.sets)]):
        if key not in header:
            if key == "x":
                continue
            raise wrong(f"set {key!r} that the result names is missing")
        dtype, shape = header[key]
        if dtype not in FLOATS:
            raise wrong(f"set {key!r} is {dtype}, expected floating-point images")
        if not shape or shape[0] != rows:
            raise wrong(f"set {key!r} has {shape[0] if shape else 0} rows, expected {rows} (one per sample)")
        if image is not None and shape[1:] != image:
            raise wrong(f"set {key!r} holds images of shape {shape[1:]}, the samples are {image}")


def cell_name(cell: dict) -> str:
    """A cell's name for a message: its runtime, attack, budget and any other key that tells cells apart."""
    parts = [str(cell.get(k)) for k in ("runtime", "defense", "group", "attack") if cell.get(k) not in (None, "")]
    return "/".join(parts) + (f" eps={cell['eps']:g}" if isinstance(cell.get("eps"), (int, float)) else "")


def cell_differences(stored: list[dict], fresh: list[dict]) -> list[str]:
    """Each stored cell that re-scores differently, named, with every field that differs (stored -> fresh)."""
    found = []
    for old, new in zip(stored, fresh):
        fields = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in dict.fromkeys([*old, *new])
                  if old.get(k) != new.get(k)]
        if fields:
            found.append(f"{cell_name(old)}: {', '.join(fields)}")
    found += [f"{cell_name(c)}: stored, not re-scored" for c in stored[len(fresh):]]
    found += [f"{cell_name(c)}: re-scored, not stored" for c in fresh[len(stored):]]
    return found


SAME = ("kind", "bundle", "seed", "samples", "limit", "norm", "attacks")


def load_matching(out: Path, fresh: Result) -> tuple[Result, Stored]:
    """The result at `out` and its tensors, refused unless it was made with `fresh`'s settings."""
    previous, stored = load_result(out)
    if any(getattr(previous, k) != getattr(fresh, k) for k in SAME) or \
            previous.runtime_labels() != fresh.runtime_labels():
        raise RobustDeployError(f"{out} was made with other settings; use another --out or drop --resume")
    return previous, stored


def resume_from(out: Path, fresh: Result) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Sets already crafted by an interrupted run with the same settings, and their tensors."""
    previous, stored = load_matching(out, fresh)
    return previous.sets, dict(stored)
