"""Issue 23: nothing half-done on a full disk, a tampered file or a bad suite; every long loop speaks. Each case
is one `error:` line and exit 2, and nothing half-written is left behind."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from tests.test_bad_input import refused


@pytest.fixture()
def work(tmp_path, monkeypatch) -> Path:
    """The current folder of the command: it must stay empty."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture(scope="module")
def result_file(bundle_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("result")
    return evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch",), epsilons=(0.1,), limit=6,
                               out=folder / "r.json", attack_params={"steps": 2})).path


@pytest.fixture()
def full_disk(tmp_path) -> Path:
    """A real, tiny tmpfs filled to the last byte (needs root and mount; skipped where the system refuses)."""
    mount = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def left_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# 1. Storage errors: one line naming the path the user gave, for every writer (safetensors included).
def test_a_full_disk_is_one_line_for_each_writer(full_disk, bundle_dir, result_file, work, capsys,
                                                   monkeypatch):
    out = full_disk / "out"
    refused(capsys, monkeypatch, ["-q", "train", "--epochs", "1", "--out", out / "run"],
            f"cannot write {out / 'run'}: no space left on the device", untouched=(work,))
    refused(capsys, monkeypatch, ["evaluate", bundle_dir, "-r", "torch", "--limit", "4", "--eps", "0.1",
                                  "--attack-opt", "steps=2", "--out", out / "res.json"],
            f"cannot write {out / 'res.'}", "no space left", untouched=(work, bundle_dir))
    refused(capsys, monkeypatch, ["report", result_file, "--html", out / "page.html"],
            f"cannot write {out / 'page.html'}: no space left", untouched=(work, result_file.parent))
    assert left_in(full_disk) == {"filler"}, "a failed write left something behind"


@pytest.mark.parametrize("code,needle", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EDQUOT, "the disk quota is exhausted"),
    (errno.EROFS, "the file system is read-only"),
    (errno.EIO, "an input/output error"),
])
def test_each_storage_error_is_named(result_file, tmp_path, work, capsys, monkeypatch, code, needle):
    def broken(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", broken)
    refused(capsys, monkeypatch, ["report", result_file, "--html", tmp_path / "page.html"],
            f"cannot write {tmp_path / 'page.html'}: {needle}", untouched=(work, result_file.parent))
    assert not list(tmp_path.glob("*page.html*")), "a partial page was left"


def test_safetensors_storage_errors_name_the_run(tmp_path, work, capsys, monkeypatch):
    """The safetensors writer reports the OS's text, not an OSError: mapped all the same, by the run folder."""
    import safetensors.torch

    def full(tensors, metadata=None):
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save", full)
    refused(capsys, monkeypatch, ["-q", "train", "--epochs", "1", "--out", tmp_path / "run"],
            f"cannot write {tmp_path / 'run'}: no space left", untouched=(work,))
    assert left_in(tmp_path) == {"work"}
