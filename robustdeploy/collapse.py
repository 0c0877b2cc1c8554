"""Signs of a collapsed classifier (one that predicts (nearly) one class whatever the input), read off its
predictions: `train` refuses such a model and the evaluations warn about one (issue 21)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NEAR_CHANCE = 5.0  # accuracy points above chance (100 / K) that still count as a guess
DOMINANT_SHARE = 90.0  # percent of the predictions one class may take before the model counts as collapsed
FLAT_LOSS = 0.03  # relative distance from ln K within which every epoch's loss counts as a uniform guess's


@dataclass(frozen=True)
class Dominant:
    """The most predicted class, its share of the predictions and its share of the true labels (percent)."""

    label: int
    share: float
    true_share: float

    @property
    def collapsed(self) -> bool:
        """One class takes nearly every prediction although the labels are not mostly that class."""
        return self.share >= DOMINANT_SHARE and self.true_share < DOMINANT_SHARE / 2


def dominant_class(predicted: torch.Tensor, y: torch.Tensor, num_classes: int) -> Dominant:
    counts = torch.bincount(predicted.flatten().long().cpu(), minlength=num_classes)
    label = int(counts.argmax())
    n = max(1, len(predicted))
    return Dominant(label, 100.0 * int(counts[label]) / n, 100.0 * int((y.cpu() == label).sum()) / n)


def flat_loss(losses: list[float], num_classes: int) -> bool:
    """Every epoch's loss at ln K, the cross-entropy of a uniform guess: the model never left the start."""
    return bool(losses) and all(abs(loss - math.log(num_classes)) <= FLAT_LOSS * math.log(num_classes)
                                for loss in losses)


def diagnose(predicted: torch.Tensor, y: torch.Tensor, num_classes: int, losses: list[float],
             classes: tuple[str, ...] = ()) -> str | None:
    """Why the model counts as collapsed (val accuracy within NEAR_CHANCE points of chance, or one class taking
    DOMINANT_SHARE % of the predictions; a loss flat at ln K is named as the cause), or None when it does not.
    A flat loss alone is no collapse: distillation's loss at T = 100 sits near ln K by design."""
    accuracy = 100.0 * int((predicted.cpu() == y.cpu()).sum()) / max(1, len(y))
    chance = 100.0 / num_classes
    top = dominant_class(predicted, y, num_classes)
    signs = []
    if accuracy < chance + NEAR_CHANCE:
        signs.append(f"val accuracy {accuracy:.1f}% is within {NEAR_CHANCE:g} points of chance ({chance:.1f}%)")
    if top.collapsed:
        name = classes[top.label] if top.label < len(classes) else str(top.label)
        signs.append(f"class {name!r} takes {top.share:.0f}% of the val predictions")
    if not signs:
        return None
    if flat_loss(losses, num_classes):
        signs.append(f"the training loss stayed at ln {num_classes} = {math.log(num_classes):.3f} (a uniform "
                     "guess's) in every epoch")
    return "; ".join(signs)
