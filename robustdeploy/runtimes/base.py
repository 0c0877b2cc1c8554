"""The Runtime interface, its capabilities and the `name[:variant]` spec users pass to --runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.registry import Registry

if TYPE_CHECKING:
    from robustdeploy.bundle import Bundle


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    variant: str = "fp32"

    @property
    def label(self) -> str:
        return self.name if self.variant == "fp32" else f"{self.name}:{self.variant}"


class Runtime(ABC):
    """Batched logits for float32 pixels in [0, 1], shape (N, C, H, W); results come back on the CPU."""

    capability: Capability = Capability.SCORES

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec
        self.queries = 0

    @property
    def label(self) -> str:
        return self.spec.label

    @abstractmethod
    def _logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits for any number of samples, batched; counts one query per sample."""
        x = x.detach().float().cpu()
        self.queries += len(x)
        if len(x) == 0:
            return torch.empty(0)
        return torch.cat([self._logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self.logits(x, batch_size).argmax(1)

    def describe(self) -> dict:
        return {"runtime": self.label}

    def timed_call(self, x: torch.Tensor) -> TimedCall:
        """A zero-argument inference on `x` for latency measurement; device copies are timed apart."""
        return TimedCall(lambda: self._logits(x), copy_seconds=None)


@dataclass(frozen=True)
class TimedCall:
    run: Callable[[], object]
    copy_seconds: float | None


RUNTIMES: Registry = Registry("runtime")


def parse_runtime(text: str) -> RuntimeSpec:
    name, _, variant = text.partition(":")
    if name not in RUNTIMES:
        raise RobustDeployError(RUNTIMES.unknown_message(name))
    return RuntimeSpec(name, variant or "fp32")


def create_runtime(bundle: Bundle, text: str, **options) -> Runtime:
    """Create a runtime for `bundle` from a spec such as `ort-cpu`, `ort-cuda:fp16` or `torch`."""
    spec = parse_runtime(text)
    return RUNTIMES.get(spec.name)(bundle, spec, **options)
