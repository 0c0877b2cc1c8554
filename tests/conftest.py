"""Shared tiny real fixtures: a CNN trained for a few seconds on scikit-learn digits, and its bundle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.recipe import train
from robustdeploy.train import TrainConfig


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cnn-digits"
    train(TrainConfig(arch="cnn", epochs=8, seed=0), out)
    return out


@pytest.fixture(scope="session")
def bundle_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "cnn-digits"
    export_bundle(ExportConfig(run_dir=run_dir, out=out))
    return out


@pytest.fixture()
def bundle_copy(bundle_dir, tmp_path) -> Path:
    """A private copy for tests that tamper with a bundle."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def rehash(bundle_dir: Path, name: str) -> None:
    """Record a deliberately modified bundle file's new SHA-256, as an attacker or a broken tool would."""
    import json

    from robustdeploy.io import sha256_file

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(bundle_dir / name)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustdeploy", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def variant_bundle_dir(run_dir, tmp_path_factory) -> Path:
    """The digits CNN with fp32, fp16 and int8 variants."""
    from robustdeploy.variants import VariantConfig

    out = tmp_path_factory.mktemp("export") / "cnn-digits-variants"
    export_bundle(ExportConfig(run_dir=run_dir, out=out, variants=VariantConfig(("fp32", "fp16", "int8"))))
    return out


@pytest.fixture()
def work(tmp_path, monkeypatch) -> Path:
    """The current folder of the command: it must stay empty."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder
