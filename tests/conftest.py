"""Shared tiny real fixtures: a CNN trained for a few seconds on scikit-learn digits, and its bundle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.train import TrainConfig, train


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
