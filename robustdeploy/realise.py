"""Realisable inputs: round adversarial examples to 256 levels before scoring, and say what that changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from robustdeploy.attacks.base import realise_8bit


@dataclass(frozen=True)
class RoundingReport:
    """Samples fooling the model before and after rounding to 8 bits, on the model the attack ran against."""

    measured_on: str
    fooled_before: int
    fooled_after: int
    stopped_fooling: int
    started_fooling: int

    def to_dict(self) -> dict:
        return asdict(self)


def realise(predict: Callable[[torch.Tensor], torch.Tensor], measured_on: str, x: torch.Tensor, y: torch.Tensor,
            adv: torch.Tensor, eps: float, norm: str) -> tuple[torch.Tensor, RoundingReport]:
    """`adv` rounded to the 8-bit grid inside the eps-ball, with the count of examples that changed outcome."""
    rounded = realise_8bit(adv, x, eps, norm)
    before, after = predict(adv) != y, predict(rounded) != y
    report = RoundingReport(measured_on, int(before.sum()), int(after.sum()), int((before & ~after).sum()),
                            int((~before & after).sum()))
    return rounded, report
