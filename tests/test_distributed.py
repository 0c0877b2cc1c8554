"""`evaluate` under torchrun (gloo, 2 CPU processes): the numbers of one process, and a resume after a dead rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustdeploy.evaluation import shards
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate

ARGS = ("--limit", "96", "--batch-size", "16", "--steps", "10", "--eps", "0.05", "--eps", "0.1")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "robustdeploy", "evaluate", *map(str, args)]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def single(bundle: Path, out: Path, epsilons=(0.05, 0.1)) -> dict:
    evaluate(EvalConfig(bundle=bundle, limit=96, batch_size=16, epsilons=epsilons, attack_params={"steps": 10},
                        out=out))
    return json.loads(out.read_text())


def test_bounds_are_contiguous_whole_batches() -> None:
    parts = [shards.bounds(100, 16, shards.Group(rank, 3)) for rank in range(3)]
    assert parts == [(0, 48), (48, 80), (80, 100)]
    assert all(start % 16 == 0 for start, _ in parts)


def test_two_ranks_give_the_single_process_numbers(bundle_dir, tmp_path) -> None:
    expected = single(bundle_dir, tmp_path / "one.json")
    proc = subprocess.run(torchrun(bundle_dir, *ARGS, "--out", tmp_path / "two.json"), capture_output=True,
                          text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "two.json").read_text())
    assert got["complete"] and got["samples"] == expected["samples"] == 96
    assert got["cells"] == expected["cells"]
    drop = ("seconds",)
    assert [{k: v for k, v in s.items() if k not in drop} for s in got["sets"]] == \
        [{k: v for k, v in s.items() if k not in drop} for s in expected["sets"]]
    one, two = load_file(str(tmp_path / "one.adv.safetensors")), load_file(str(tmp_path / "two.adv.safetensors"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert proc.stdout.count("results ->") == 1  # only rank 0 reports
    assert not (tmp_path / "two.shards").exists()  # merged into the one result


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=`rank` among the children of `parent`."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find a rank's process")
def test_a_dead_rank_loses_no_shard_and_the_rerun_resumes(bundle_dir, tmp_path) -> None:
    epsilons = ("0.03", "0.05", "0.08", "0.1")
    args = [*ARGS[:6], *[a for e in epsilons for a in ("--eps", e)]]
    out = tmp_path / "r.json"
    start, stop = shards.bounds(96, 16, shards.Group(1, 2))
    second = shards.shard_path(out, start, stop)
    launcher = subprocess.Popen(torchrun(bundle_dir, *args, "--out", out), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 300
    while not second.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # rank 1 saves its shard after its first set
    pid = rank_pid(launcher.pid, 1)
    assert pid is not None and second.exists(), "rank 1 finished or failed before it could be killed"
    os.kill(pid, signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and not out.exists()
    kept = {s["key"]: s for s in json.loads(second.read_text())["sets"]}
    assert 0 < len(kept) < len(epsilons)  # killed mid-shard

    proc = subprocess.run(torchrun(bundle_dir, *args, "--out", out, "--resume"), capture_output=True, text=True,
                          timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    redone = [line.split()[2].rstrip(":") for line in proc.stderr.splitlines()
              if line.startswith("[rank 1]") and "samples attacked" in line]
    assert redone and not set(redone) & set(kept)  # rank 1 continued its shard, redoing none of its sets
    assert len(redone) == len(epsilons) - len(kept)
    expected = single(bundle_dir, tmp_path / "one.json", tuple(float(e) for e in epsilons))
    assert json.loads(out.read_text())["cells"] == expected["cells"]
