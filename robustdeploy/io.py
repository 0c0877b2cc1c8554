"""Atomic file writes, hashing and version records: nothing half-written is ever left behind."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from robustdeploy.errors import RobustDeployError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RobustDeployError(f"cannot write {path} ({exc.strerror}); choose another path") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # as an ordinary write would leave it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_dir(out: Path) -> Path:
    """A fresh sibling folder of `out` to build it in before one atomic rename, readable as a new folder is."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def check_output(path: Path, option: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, under a file, read-only."""
    path = Path(path)
    if path.is_dir():
        raise RobustDeployError(f"{option} {path} is a folder; give a file name, e.g. {path / 'result.json'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RobustDeployError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RobustDeployError(f"{option} {path} is not writable; choose a folder you can write to")


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_document(path: Path, fmt: str, fix: str) -> dict:
    """A JSON document of format `fmt`; anything else (unreadable, corrupt, foreign) is one error ending in `fix`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobustDeployError(f"{path} is corrupt or unreadable ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise RobustDeployError(f"{path} is not a {fmt} document; {fix}")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result, recorded in every artifact."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    from robustdeploy.version import __version__

    return {
        "robustdeploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
