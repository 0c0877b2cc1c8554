"""benchmarks/gpu_check.sh, the check a lent GPU runs once: valid bash, every command's options known to the CLI and
to benchmarks/attacks.py (a typo would cost the one GPU run), on cuda and in its CPU mode."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustdeploy.cli import app

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def attacks_benchmark():
    spec = importlib.util.spec_from_file_location("attacks_benchmark", ROOT / "benchmarks" / "attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_command_of_the_gpu_check_parses(device, tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "mnist"), device], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path / "out")},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = {fields[0]: fields[1:] for fields in (r.split("\0") for r in proc.stdout.split("\0\n")) if fields[0]}
    assert {"train", "export", "evaluate", "rescore", "bench", "defend-eval", "detector", "detector-rescore-on-cpu",
            "attacks", "gpu-tests"} <= set(steps)
    parser = attacks_benchmark().arguments()
    for name, command in steps.items():
        if command[1:3] == ["-m", "robustdeploy"]:  # typer rejects an unknown option even with --help
            result = CliRunner().invoke(app, [*command[3:], "--help"])
            assert result.exit_code == 0, (name, result.output)
        elif command[1:2] == ["benchmarks/attacks.py"]:
            assert parser.parse_args(command[2:]).device == device
        elif command[1:3] == ["-m", "pytest"]:
            assert all((ROOT / arg).is_file() for arg in command[3:] if arg.startswith("tests/"))
    assert ("ort-cuda" in steps["evaluate"]) == (device == "cuda")
