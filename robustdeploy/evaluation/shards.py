"""Windows and scale-out on torch.distributed (run under `torchrun`): each rank takes a contiguous shard of the
split, made of whole batches so every sample meets the same batch and seed as in one process, and works through it
a window at a time; a window's sets and per-sample outcomes are written to disk as it finishes, and rank 0 gathers
the windows' outcomes (not their examples, which it joins on disk) into the one result."""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save

from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.results import Result, adversarial_path
from robustdeploy.io import atomic_write_bytes

SEP = "|"  # joins runtime and set key in an outcomes file: "ort-cpu|pgd/torch/eps=0.1"
DIST_TIMEOUT_MIN = 180


@dataclass(frozen=True)
class Group:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Group:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def active(self) -> bool:
        return self.size > 1

    def device(self, device: str) -> str:
        """`cuda:LOCAL_RANK` for a CUDA run under torchrun (torch and ONNX Runtime's device_id alike)."""
        return f"cuda:{self.local_rank}" if self.active and device.startswith("cuda") else device


def timeout() -> timedelta:
    """How long a rank waits for the others at a collective (ROBUSTDEPLOY_DIST_TIMEOUT_MIN, default 180 minutes):
    ranks meet only at the end, so the fastest waits out the slowest; NCCL's own default (10 minutes) would kill a
    long run whose shards take unequal time."""
    text = os.environ.get("ROBUSTDEPLOY_DIST_TIMEOUT_MIN", str(DIST_TIMEOUT_MIN))
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if minutes <= 0:
        raise RobustDeployError(f"ROBUSTDEPLOY_DIST_TIMEOUT_MIN must be a positive number of minutes, not {text!r}")
    return timedelta(minutes=minutes)


def join(device: str) -> Group:
    """Under torchrun, join the process group (gloo on CPU, NCCL on GPUs) once, with an explicit `timeout`; a no-op
    in a single process."""
    group = Group.from_env()
    if group.active and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(group.local_rank)
            dist.init_process_group("nccl", device_id=torch.device(group.device(device)), timeout=timeout())
        else:
            dist.init_process_group("gloo", timeout=timeout())
        atexit.register(dist.destroy_process_group)
        logging.getLogger("robustdeploy").addFilter(_tag(group.rank))
    return group


def _tag(rank: int) -> Callable[[logging.LogRecord], bool]:
    """Progress lines of the ranks interleave on one terminal: each says which rank it comes from."""
    def tag(record: logging.LogRecord) -> bool:
        record.msg = f"[rank {rank}] {record.msg}"
        return True
    return tag


def bounds(samples: int, batch_size: int, group: Group) -> tuple[int, int]:
    """[start, stop) of this rank's shard: contiguous whole batches, the first ranks taking one more if uneven."""
    batches = -(-samples // batch_size)
    if batches < group.size:
        raise RobustDeployError(f"{samples} samples in batches of {batch_size} make {batches} batches for "
                                f"{group.size} processes; use fewer processes or a smaller --batch-size")
    share, extra = divmod(batches, group.size)
    first = group.rank * share + min(group.rank, extra)
    last = first + share + (group.rank < extra)
    return first * batch_size, min(last * batch_size, samples)


def folder(out: Path) -> Path:
    return Path(out).with_suffix(".shards")


def shard_path(out: Path, start: int, stop: int) -> Path:
    return folder(out) / f"samples-{start:07d}-{stop:07d}.json"


def outcomes_path(path: Path) -> Path:
    return Path(path).with_suffix(".outcomes.safetensors")


def windows(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) cut into consecutive windows of `size` samples (whole batches), the last one shorter."""
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def release_memory() -> None:
    """Hand the heap a finished window freed back to the system (glibc's malloc_trim): without it glibc keeps the
    freed pages of each window's tensors and decoded images, and the resident set creeps up window after window."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc: nothing to do
        pass


def recording(labels: Callable[[str, str], torch.Tensor], seen: dict[str, torch.Tensor]) -> Callable:
    """`labels` that also keeps every (runtime, set) it was asked for: the window's per-sample outcomes."""
    def call(runner: str, key: str) -> torch.Tensor:
        seen[runner + SEP + key] = labels(runner, key)
        return seen[runner + SEP + key]
    return call


def save_outcomes(path: Path, outcomes: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(outcomes_path(path), save({k: v.contiguous() for k, v in outcomes.items()}))


def load_outcomes(path: Path) -> dict[str, torch.Tensor] | None:
    """The outcomes of a finished window, or None if it never finished."""
    found = outcomes_path(path)
    return load_file(str(found)) if found.is_file() else None


@dataclass
class Window:
    """A finished window: samples [start, stop), the file of its result (its examples beside it), its sets and
    its per-sample outcomes."""

    start: int
    stop: int
    path: Path
    result: Result
    outcomes: dict[str, torch.Tensor]


def gather(done: list[Window], group: Group) -> list[Window] | None:
    """Every rank's windows, in sample order, on rank 0 (None elsewhere); a rank sends outcomes, not examples."""
    if not group.active:
        return done
    found: list[list[Window]] | None = [None] * group.size if group.rank == 0 else None  # type: ignore[list-item]
    dist.gather_object(done, found, dst=0)
    if found is None:
        return None
    windows = [w for rank in found for w in rank]
    missing = [w.path for w in windows if not adversarial_path(w.path).is_file()]
    if missing:
        raise RobustDeployError(f"rank 0 cannot see {missing[0]}: with several hosts, --out must be on a "
                                "filesystem that every host shares")
    return windows


def merge(windows: list[Window]) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """Sets (counts summed over windows), outcomes (concatenated) and minimal-norm norms of the whole split."""
    results = [w.result for w in windows]
    outcomes = {k: torch.cat([w.outcomes[k] for w in windows]) for k in windows[0].outcomes}
    sets = []
    for each in zip(*(r.sets for r in results)):
        merged = dict(each[0])
        attacked = sum(s["attacked"] for s in each)
        merged.update(attacked=attacked, seconds=round(sum(s["seconds"] for s in each), 4),
                      gradients=sum(s["gradients"] for s in each), queries_median=None)
        if merged["queries_mean"] is not None:  # the median of a split run is not recoverable from windows
            merged["queries_mean"] = round(sum(s["queries_mean"] * s["attacked"] for s in each) / max(1, attacked),
                                           2)
        if merged.get("iterations_mean") is not None:
            merged["iterations_mean"] = round(sum(s["iterations_mean"] * s["attacked"] for s in each)
                                              / max(1, attacked), 2)
        if merged["rounding"] is not None:
            merged["rounding"] = {k: sum(s["rounding"][k] for s in each) for k in merged["rounding"]}
        sets.append(merged)
    norms = {k: [n for r in results for n in r.extra.get("norms", {}).get(k, [])]
             for k in results[0].extra.get("norms", {})}
    return sets, outcomes, norms


def finish(out: Path) -> None:
    """Drop the windows once the one result that holds them all is on disk."""
    shutil.rmtree(folder(out), ignore_errors=True)

