"""`run suite.toml`: validated in one line, results written as it goes, a killed suite resumes without redoing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, cli

SUITE = """
bundles = ["{bundle}"]
out = "results"

[defaults]
limit = 64
batch_size = 32
runtimes = ["torch", "ort-cpu"]

[[evaluation]]
name = "fgsm"
attacks = ["fgsm"]
eps = [0.05]

[[evaluation]]
name = "pgd"
attacks = ["pgd"]
eps = [0.02, 0.04, 0.06, 0.08, 0.1]
params = {{ steps = 10 }}

[[evaluation]]
name = "gate"
kind = "check"
attacks = ["fgsm"]
eps = [0.05]
max_robust_drop = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_killed_suite_resumes_without_recomputing(bundle_dir, tmp_path) -> None:
    suite = write(tmp_path, SUITE.format(bundle=bundle_dir))
    first, second = tmp_path / "results/cnn-digits/fgsm.json", tmp_path / "results/cnn-digits/pgd.json"
    proc = subprocess.Popen([sys.executable, "-m", "robustdeploy", "run", str(suite)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the pgd evaluation saves its result after each budget
    assert second.exists() and proc.poll() is None, "the suite finished or failed before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    kept = [s["key"] for s in json.loads(second.read_text())["sets"]]
    assert json.loads(first.read_text())["complete"] and 0 < len(kept) < 5
    stamp = first.stat().st_mtime_ns

    again = cli("run", suite)
    assert again.returncode == 0, again.stderr
    assert "cnn-digits/fgsm: already complete" in again.stderr
    crafted = [line.split(":")[0] for line in again.stderr.splitlines() if "samples attacked" in line]
    assert not set(kept) & set(crafted) and len([k for k in crafted if k.startswith("pgd/")]) == 5 - len(kept)
    assert first.stat().st_mtime_ns == stamp  # not rewritten
    assert json.loads(second.read_text())["complete"]
    assert "resumed" in again.stdout and "PASSED" in again.stdout
    assert cli("run", suite).stderr.count("already complete") == 3  # third run: nothing left to do


@pytest.mark.parametrize("text, needle", [
    ("bundles = [\n", "not valid TOML"),
    ("bundles = ['{bundle}']\n[[evaluation]]\nname = 'a'\nepss = [0.1]\n", "unknown key 'epss'"),
    ("bundles = ['{bundle}']\n[[evaluation]]\nname = 'a'\nkind = 'evaluat'\n", "did you mean"),
    ("bundles = ['{bundle}']\n[[evaluation]]\nname = 'a'\nlimit = 'ten'\n", "limit must be an int"),
    ("bundles = ['nowhere']\n[[evaluation]]\nname = 'a'\n", "bundle"),
    ("bundles = ['{bundle}']\n[[evaluation]]\nname = 'a'\n[[evaluation]]\nname = 'a'\n", "used twice"),
    ("bundles = ['{bundle}']\n", "[[evaluation]]"),
    ("bundles = ['{bundle}']\nevaluation = [1]\n", "[[evaluation]]"),
    ("bundles = ['{bundle}']\ndefaults = 3\n[[evaluation]]\nname = 'a'\n", "defaults must be a table"),
])
def test_bad_suites_are_one_line_errors(bundle_dir, tmp_path, text, needle) -> None:
    suite = write(tmp_path, text.format(bundle=bundle_dir))
    assert_one_line_error(cli("run", suite), needle)
    assert not (tmp_path / "suite-results").exists()
