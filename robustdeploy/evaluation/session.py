"""An evaluation session: bundle, test split, reference graph and runtimes, opened and validated once."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from robustdeploy import devices
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.data import DataConfig, Samples, Split, load_test_samples
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.score import runners
from robustdeploy.memory import check_fits
from robustdeploy.runtimes import Runtime, RuntimeSpec, create_runtime, parse_runtime
from robustdeploy.runtimes.torch import TorchRuntime

M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class SessionConfig:
    """What every kind of evaluation needs to open; defaults live here, not in the CLI."""

    bundle: Path
    runtimes: tuple[str, ...] = ("torch", "ort-cpu")
    limit: int | None = None
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    window: int | None = None  # samples held at a time (default: WINDOW_BYTES of pixels); more go window by window


WINDOW_BYTES = 64 * 2**20  # default window: this many bytes of float32 pixels per stored set


@dataclass
class Session:
    """The opened pieces; `reference` is the PyTorch graph attacks differentiate, `torch` its runtime view.
    `samples` is the split, unread; `test` reads it into memory the first time it is asked for."""

    config: SessionConfig
    bundle: Bundle
    samples: Samples
    runtimes: list[Runtime]
    reference: torch.nn.Module
    torch: Runtime
    offset: int = 0  # index in the split of the first sample (non-zero for a shard or a window)

    @functools.cached_property
    def test(self) -> Split:
        return self.samples.load()

    def shard(self, start: int, stop: int) -> Session:
        """This session on samples [start, stop) of its split only (nothing read until its `test` is asked for)."""
        return replace(self, samples=self.samples.part(start, stop), offset=self.offset + start)

    @property
    def window(self) -> int:
        """Samples held in memory at a time, in whole batches: `config.window`, by default as many as fit in
        WINDOW_BYTES (a few hundred thousand 8x8 digits, about a hundred 224x224 colour images)."""
        size = self.config.window or max(1, WINDOW_BYTES // (4 * math.prod(self.samples.shape)))
        return -(-size // self.batch_size) * self.batch_size

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def device(self) -> str:
        return self.config.device

    def place(self, model: M) -> M:
        """`model` on the session's device, for evaluation: every model a plan runs goes through here."""
        return devices.place(model, self.device)

    def runners(self) -> dict:
        """Label -> predict function of every runtime and the PyTorch reference (`torch`)."""
        return runners([self.torch, *self.runtimes], self.batch_size)

    def header(self) -> dict:
        data = {**self.bundle.data.to_dict(), "data_root": self.config.data_root or self.bundle.data.data_root}
        return {"bundle": str(self.bundle.path), "seed": self.config.seed, "samples": len(self.samples),
                "limit": self.config.limit, "data": data, "runtimes": [r.describe() for r in self.runtimes]}


def validate(config: SessionConfig) -> None:
    """Checks that need nothing opened: limits, batch size, runtime list, device."""
    if config.limit is not None and config.limit < 1:
        raise RobustDeployError(f"--limit must be at least 1, got {config.limit}")
    if config.window is not None and config.window < 1:
        raise RobustDeployError(f"--window must be at least 1, got {config.window}")
    if config.batch_size < 1:
        raise RobustDeployError(f"--batch-size must be at least 1, got {config.batch_size}")
    if not config.runtimes:
        raise RobustDeployError("give at least one --runtime (e.g. --runtime torch --runtime ort-cpu)")
    labels = [parse_runtime(n).label for n in config.runtimes]
    if len(set(labels)) != len(labels):
        raise RobustDeployError(f"a runtime is listed twice: {', '.join(labels)}")
    devices.check_device(config.device)


def check_sizes(config: SessionConfig, samples: Samples) -> None:
    """--batch-size and --window against the memory they would take (of those samples there are), before any
    allocation: a batch on the session's device, a window of pixels and one stored set on the host."""
    image = 4 * math.prod(samples.shape)
    batch = min(config.batch_size, len(samples))
    check_fits(f"--batch-size {config.batch_size}", image * batch, "give a smaller --batch-size", config.device)
    if config.window is not None:
        window = min(config.window, len(samples))
        check_fits(f"--window {config.window}", 2 * image * window, "give a smaller --window (the samples held in "
                   "memory at a time)")


def load_test_split(bundle: Bundle, data_root: str | None, limit: int | None) -> Samples:
    """The bundle's test split, unread, checked against the bundle's input shape."""
    if data_root is not None and bundle.data.name == "digits":
        raise RobustDeployError("--data-root is for datasets read from disk; the bundle uses the built-in "
                                "digits, drop --data-root")
    config = bundle.data if data_root is None else DataConfig(**{**bundle.data.to_dict(), "data_root": data_root})
    samples = load_test_samples(config)
    if samples.shape != bundle.input_shape:
        raise RobustDeployError(f"dataset {config.name!r} gives inputs of shape {samples.shape}, the bundle "
                                f"expects {bundle.input_shape}; use the dataset the model was trained on")
    return samples.head(limit)


def open_session(config: SessionConfig, bundle: Bundle | None = None) -> Session:
    """Validate `config`, verify the bundle, load the split, open every runtime."""
    validate(config)
    devices.pin_numerics(config.device)
    bundle = bundle or load_bundle(config.bundle)
    test = load_test_split(bundle, config.data_root, config.limit)
    check_sizes(config, test)
    runtimes = [create_runtime(bundle, name, device=config.device, max_batch=config.batch_size)
                for name in config.runtimes]
    reference = devices.place(bundle.reference_model(), config.device)
    torch_rt = next((r for r in runtimes if r.label == "torch"), None) or \
        TorchRuntime(RuntimeSpec("torch"), reference, config.device)
    return Session(config, bundle, test, runtimes, reference, torch_rt)
