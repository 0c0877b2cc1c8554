"""Atomic file writes, hashing and version records: nothing half-written is ever left behind."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from robustdeploy.errors import RobustDeployError
from robustdeploy.schema import validate


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_tensors(path: Path, tensors: dict) -> None:
    """Write named torch tensors as one .safetensors file, atomically and with storage errors mapped."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({name: tensor.contiguous() for name, tensor in tensors.items()}))


# What each storage failure means to a user, and what to do about it.
STORAGE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some of your quota or choose another folder"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EIO: ("an input/output error (a failing disk or a lost network mount)",
                "check the disk or choose another folder"),
}


class StorageError(RobustDeployError):
    """A write failed for a reason of the storage, not of the data: `code` is its errno."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def storage_error(path: Path, exc: BaseException) -> StorageError | None:
    """The one-line error for a storage failure while writing `path`, raised by Python (an OSError) or by a
    library that reports the OS's text (safetensors, onnx, torch.onnx); None for anything else. A StorageError
    from a file inside a staging folder is named again by the folder the user asked for."""
    if isinstance(exc, StorageError):
        code = exc.code
    elif isinstance(exc, RobustDeployError):
        return None
    else:
        code = exc.errno if isinstance(exc, OSError) else None
    if code not in STORAGE_ERRORS:
        text = str(exc)
        code = next((c for c in STORAGE_ERRORS if os.strerror(c) in text or f"os error {c})" in text), None)
    if code is None:
        return None
    reason, fix = STORAGE_ERRORS[code]
    return StorageError(f"cannot write {path}: {reason}; {fix} (nothing partial was left)", code)


def raise_storage_error(path: Path, exc: BaseException) -> None:
    """Raise `storage_error(path, exc)` if `exc` is one; otherwise return, for the caller to re-raise `exc`."""
    error = storage_error(path, exc)
    if error is not None:
        raise error from None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a storage failure inside the block into one error line naming `path`."""
    try:
        yield
    except Exception as exc:
        raise_storage_error(path, exc)
        raise


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file in `path`'s folder, renamed onto `path` when the block ends without an
    error (removed if it raises): for files written piece by piece, too large to hold in memory."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise_storage_error(path, exc)
        raise RobustDeployError(f"cannot write {path} ({exc.strerror}); choose another path") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # as an ordinary write would leave it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        raise_storage_error(path, exc)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_dir(out: Path) -> Path:
    """A fresh sibling folder of `out` to build it in before one atomic rename, readable as a new folder is."""
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def discard_staging(tmp: Path, out: Path, exc: BaseException) -> None:
    """After a failed build of `out` in `tmp`: remove `tmp`, and turn a storage failure into one error line
    naming `out` (any other error returns, for the caller to re-raise)."""
    shutil.rmtree(tmp, ignore_errors=True)
    raise_storage_error(out, exc)


def check_output(path: Path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written (a folder, under a file, read-only, being
    written by another run); then hold it for this run."""
    check_outputs((path, option))


def check_outputs(*outputs: tuple[Path | None, str]) -> None:
    """`check_output` for several (path, option) pairs: all are checked before any is held."""
    given = [(Path(path), option) for path, option in outputs if path is not None]
    for path, option in given:
        if path.is_dir():
            raise RobustDeployError(f"{option} {path} is a folder; give a file name, e.g. {path / 'result.json'}")
        _check_parent(path, option)
        if path.exists() and not os.access(path, os.W_OK):
            raise RobustDeployError(f"{option} {path} is not writable; choose a folder you can write to")
    for path, option in given:
        claim(path, option)


def check_output_dir(path: Path, option: str, replace: bool, fix: str) -> None:
    """The same for an output folder: refused if it is a file, or exists and `replace` is off (then `fix`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RobustDeployError(f"{option} {path} is a file, not a folder; choose another path")
    if path.exists() and not replace and (not path.is_dir() or any(path.iterdir())):
        raise RobustDeployError(f"{path} already exists; {fix}")
    _check_parent(path, option)
    claim(path, option)


def _check_parent(path: Path, option: str) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RobustDeployError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RobustDeployError(f"{option} {path} is not writable; choose a folder you can write to")


_HELD: dict[Path, tuple[int, list[Path]]] = {}  # output -> (lock descriptor, folders made for it)
_SCOPES: list[list[Path]] = []  # outputs claimed in each running `exclusive_outputs` call


def exclusive_outputs(func):
    """Outputs that `func` claims are held while it runs and released when it returns or fails (outside any
    such call, at process exit)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _SCOPES.append([])
        try:
            return func(*args, **kwargs)
        finally:
            for key in _SCOPES.pop():
                _release(key)
    return wrapper


def claim(path: Path, option: str) -> None:
    """Hold an exclusive lock on `path` (a hidden `.NAME.lock` beside it), so that two runs never write the same
    output: a second run is refused at once, and a killed run's lock dies with it."""
    key = Path(path).resolve()
    if key in _HELD:
        return
    lock = key.parent / f".{key.name}.lock"
    made = [p for p in [key.parent, *key.parent.parents] if not p.exists()]  # removed again at exit if empty
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RobustDeployError(f"another robustdeploy run is writing {path}; wait for it to finish or "
                                        f"choose another {option}") from None
            if lock.exists() and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # its holder removed it as we waited for it: lock the new one
    except OSError as exc:
        raise RobustDeployError(f"cannot write {path} ({exc.strerror}); choose another {option}") from None
    _HELD[key] = fd, made
    if _SCOPES:
        _SCOPES[-1].append(key)


def _release(key: Path) -> None:
    fd, made = _HELD.pop(key)
    (key.parent / f".{key.name}.lock").unlink(missing_ok=True)
    os.close(fd)
    for folder in made:
        try:
            folder.rmdir()  # only if the run left nothing in it
        except OSError:
            break


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _release(key)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_document(path: Path, fmt: str, fix: str) -> dict:
    """A JSON document of format `fmt` that follows its declared schema (robustdeploy/schemas/); anything else
    (unreadable, corrupt, foreign, wrong types, unknown keys) is one error ending in `fix`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobustDeployError(f"{path} is corrupt or unreadable ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise RobustDeployError(f"{path} is not a {fmt} document; {fix}")
    return validate(data, path, fix)


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
