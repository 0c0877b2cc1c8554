"""Sanity checks on every evaluation, the usual signs of a broken attack or gradient masking: AutoAttack's
(`autoattack/checks.py`) and Carlini et al., "On evaluating adversarial robustness" (arXiv:1902.06705)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from robustdeploy.attacks.base import loss_per_sample

UNBOUNDED_SUCCESS = 99.0  # percent an unbounded attack must reach
TOLERANCE = 1.0  # percentage points of accuracy we do not call a violation
FAR_ABOVE = 10.0  # points a query-based attack's robust accuracy may exceed the white-box one's before it is flagged


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str



def monotone_budget(curves: dict[str, list[tuple[float, float]]]) -> Check:
    """Robust accuracy (per runtime, as (eps, accuracy %) pairs) must not rise with a larger budget."""
    rises = [f"{rt}: {a0:.2f}% at eps={e0:g} -> {a1:.2f}% at eps={e1:g}"
             for rt, curve in curves.items()
             for (e0, a0), (e1, a1) in zip(sorted(curve), sorted(curve)[1:]) if a1 > a0 + 1e-9]
    return Check("monotone_budget", not rises,
                 "robust accuracy rises with the budget (a weak or broken attack): " + "; ".join(rises) if rises
                 else "robust accuracy never rises with the budget")


def unbounded_success(success: dict[tuple[str, float], float], norm: str, input_dim: int) -> Check | None:
    """At the largest budget the norm allows on [0, 1] pixels every label is reachable: expect ~100%."""
    limit = 1.0 if norm == "linf" else input_dim**0.5
    rows = {k: v for k, v in success.items() if k[1] >= limit - 1e-9}
    if not rows:
        return None
    low = [f"{rt} eps={eps:g}: {rate:.2f}%" for (rt, eps), rate in sorted(rows.items()) if rate < UNBOUNDED_SUCCESS]
    return Check("unbounded_success", not low,
                 f"an unbounded attack stays below {UNBOUNDED_SUCCESS:g}% success (broken attack or masking): "
                 + "; ".join(low) if low else "the unbounded budget reaches ~100% success")


def input_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "margin",
                    floor: float = 1e-10, batch_size: int = 256, device: str = "cpu") -> Check:
    """Share of the samples the attack works on (correctly classified ones) whose input gradient of the attack's
    own loss on the PyTorch graph is (near) zero."""
    attacked, zero = [], []
    for i in range(0, len(x), batch_size):  # memory bounded by the batch, not the split
        xb = x[i : i + batch_size].to(device).detach().clone().requires_grad_(True)
        yb = y[i : i + batch_size].to(device)
        with torch.enable_grad():
            logits = model(xb)
            grad, = torch.autograd.grad(loss_per_sample(logits, yb, loss).sum(), xb)
        attacked.append((logits.argmax(1) == yb).cpu())
        zero.append((grad.flatten(1).norm(dim=1) <= floor).cpu() & attacked[-1])
    attacked, zero = torch.cat(attacked), torch.cat(zero)
    n, fix = int(attacked.sum()), "use --loss margin or dlr" if loss == "ce" else "use a black-box attack"
    return Check("input_gradients", not zero.any(),
                 f"{int(zero.sum())} of {n} correctly classified samples ({100.0 * int(zero.sum()) / max(1, n):.1f}%) "
                 f"have zero or vanishing input gradients of the {loss} loss (gradient masking: {fix})" if zero.any()
                 else f"input gradients of the {loss} loss are non-zero on all {n} correctly classified samples")


def masking_defense(defense: str, losses: set[str]) -> Check:
    """A defense known to mask the gradient of a loss the attack uses (distillation saturates the softmax)."""
    masked = defense == "distillation" and "ce" in losses
    return Check("masking_defense", not masked, "the bundle was trained with defensive distillation, whose saturated "
                 "softmax hides the ce gradient: use --loss margin (Carlini and Wagner 2017)" if masked
                 else f"defense {defense!r} masks no loss the attack uses")


def outputs_are_logits(logits: torch.Tensor, declared: str = "logits") -> Check:
    """Rows that are non-negative and sum to 1 are probabilities; margin/CE attacks then see a squashed loss.
    `declared` is the bundle's `output.meaning` (an imported ONNX file's, detected at import)."""
    probability = bool((logits >= 0).all()) and bool(((logits.sum(1) - 1).abs() < 1e-3).all())
    where = " (recorded when the ONNX file was imported)" if declared == "probabilities" else ""
    return Check("outputs_are_logits", not probability,
                 f"the model outputs probabilities (rows >= 0 summing to 1), not logits{where}; export the logits, or "
                 "prefer decision-based attacks (hopskipjump)" if probability else "the model outputs logits")


def for_cells(cells: list[dict], attacks: list[dict], norm: str, dim: int) -> list[Check | None]:
    """The checks read off scored cells: monotone budgets, unbounded success, black-box vs white-box."""
    curves: dict[str, list[tuple[float, float]]] = {}
    last = {(c["runtime"], c["eps"]): c for c in cells}
    for (runtime, eps), cell in last.items():
        curves.setdefault(runtime, []).append((eps, cell["robust_accuracy"]))
    success = {key: cell["attack_success_rate"] for key, cell in last.items()}
    return [monotone_budget(curves), unbounded_success(success, norm, dim), cascade_gain(cells, attacks),
            blackbox_far_above_whitebox(cells, attacks)]


def weak_blackbox(cells: list[dict], attacks: list[dict], far: float = FAR_ABOVE) -> dict[tuple, tuple[float, float]]:
    """(runtime, eps, attack) -> (its robust %, the cascade's robust % after the gradient attacks that follow it) for
    each score/decision-based attack that gradient attacks, run after it on the samples it left robust, beat by
    more than `far` points: its number alone overstates robustness (HopSkipJump off the 8-bit grid, issue 27)."""
    gradient = {a["label"] for a in attacks if a["needs"] == "gradients"}
    weak = {}
    for key in dict.fromkeys((c["runtime"], c["eps"]) for c in cells):
        chain = [c for c in cells if (c["runtime"], c["eps"]) == key]
        for i, cell in enumerate(chain):
            later = [c for c in chain[i + 1:] if c["attack"] in gradient]
            if cell["attack"] not in gradient and later and \
                    cell["robust_accuracy"] - later[-1]["robust_accuracy"] > far:
                weak[(*key, cell["attack"])] = (cell["robust_accuracy"], later[-1]["robust_accuracy"])
    return weak


def blackbox_far_above_whitebox(cells: list[dict], attacks: list[dict]) -> Check | None:
    """A query-based attack first in a cascade (`--attack hopskipjump --attack pgd`) whose robust accuracy the
    white-box attacks after it, on the same samples, lower by more than FAR_ABOVE points: a weak black-box attack."""
    needs = [a["needs"] == "gradients" for a in attacks]
    if not any(needs) or needs[0]:
        return None
    weak = weak_blackbox(cells, attacks)
    return Check("blackbox_far_above_whitebox", not weak,
                 "a query-based attack leaves far more samples robust than the white-box attacks on the same "
                 "samples (its number alone is an upper bound, not robustness): "
                 + "; ".join(f"{rt} eps={eps:g} {attack}: {mine:.2f}% -> {white:.2f}% with the white-box attacks"
                             for (rt, eps, attack), (mine, white) in weak.items()) if weak
                 else f"query-based attacks are within {FAR_ABOVE:g} points of the white-box attacks after them")


def cascade_gain(cells: list[dict], attacks: list[dict], tolerance: float = TOLERANCE) -> Check | None:
    """Score/decision-based attacks that, run after the gradient attacks of a cascade, still fool more than
    `tolerance` points of samples: the gradient attacks missed them (gradient masking?), as AutoAttack warns."""
    gradient = {a["label"] for a in attacks if a["needs"] == "gradients"}
    if not gradient or len(gradient) == len(attacks):
        return None
    gains = []
    for key in dict.fromkeys((c["runtime"], c["eps"]) for c in cells):
        chain = [c for c in cells if (c["runtime"], c["eps"]) == key]
        after = [i for i, c in enumerate(chain) if c["attack"] in gradient]
        if after and chain[after[-1]]["robust_accuracy"] - chain[-1]["robust_accuracy"] > tolerance:
            gains.append(f"{key[0]} eps={key[1]:g}: {chain[after[-1]]['robust_accuracy']:.2f}% after the gradient "
                         f"attacks -> {chain[-1]['robust_accuracy']:.2f}%")
    return Check("blackbox_not_stronger", not gains,
                 "black-box attacks fool samples the gradient attacks could not (gradient masking? use "
                 "--loss margin or a black-box attack's number): " + "; ".join(gains) if gains
                 else "black-box attacks add at most a point to the gradient attacks")


def warn(checks: Iterable[dict], stream=sys.stderr) -> None:
    """Print each failed check as one warning line."""
    for check in checks:
        if not check["passed"]:
            print(f"warning: check {check['name']} failed: {check['detail']}", file=stream)
