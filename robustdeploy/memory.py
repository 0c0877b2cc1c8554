"""Sizes a user types (batch, window, input size), checked against the memory there is before anything is
allocated: an absurd size is one error line, not a MemoryError or a machine swapping for minutes."""

from __future__ import annotations

import os

from robustdeploy.errors import RobustDeployError

MAX_INPUT = 64_000_000  # values per input image (a 4-channel 4000 x 4000 image): larger is refused as absurd
SHARE = 0.5  # a user-typed size may claim at most this share of the memory available now


def available_bytes(device: str = "cpu") -> int | None:
    """Memory available now on `device`: free GPU memory for CUDA, else the host's MemAvailable (None if unknown)."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"


def check_fits(what: str, nbytes: int, fix: str, device: str = "cpu") -> None:
    """Refuse `what` (an option and its value) if it needs more than SHARE of the memory available on `device`."""
    available = available_bytes(device)
    if available is not None and nbytes > SHARE * available:
        raise RobustDeployError(f"{what} needs {gib(nbytes)} of memory, more than half of the {gib(available)} "
                                f"available; {fix}")
