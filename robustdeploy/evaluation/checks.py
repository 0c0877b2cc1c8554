"""Sanity checks on every evaluation, the usual signs of a broken attack or gradient masking: AutoAttack's
(`autoattack/checks.py`) and Carlini et al., "On evaluating adversarial robustness" (arXiv:1902.06705)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from robustdeploy.attacks.base import loss_per_sample
from robustdeploy.collapse import dominant_class

UNBOUNDED_SUCCESS = 99.0  # percent an unbounded attack must reach
TOLERANCE = 1.0  # percentage points of accuracy we do not call a violation
MASKED_SHARE = 5.0  # percent of correctly classified samples with vanishing input gradients that still pass
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


def _vanishing(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, losses: tuple[str, ...], floor: float,
               batch_size: int, device: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Correctly classified samples, and per loss which of them have an input-gradient norm at most `floor`;
    plus the spread of the logits over the samples (zero: the output ignores the input)."""
    attacked, zero, logits_seen = [], {loss: [] for loss in losses}, []
    for i in range(0, len(x), batch_size):  # memory bounded by the batch, not the split
        xb = x[i : i + batch_size].to(device).detach().clone().requires_grad_(True)
        yb = y[i : i + batch_size].to(device)
        with torch.enable_grad():
            logits = model(xb)
            for loss in losses:
                grad, = torch.autograd.grad(loss_per_sample(logits, yb, loss).sum(), xb, retain_graph=True)
                zero[loss].append((grad.flatten(1).norm(dim=1) <= floor).cpu())
        attacked.append((logits.argmax(1) == yb).cpu())
        logits_seen.append(logits.detach().cpu())
    right = torch.cat(attacked)
    spread = torch.cat(logits_seen).std(0).max() if len(x) > 1 else torch.tensor(1.0)
    return right, {loss: torch.cat(z) & right for loss, z in zero.items()}, spread


def input_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "margin",
                    floor: float = 1e-10, batch_size: int = 256, device: str = "cpu") -> Check:
    """Share of the samples the attack works on (correctly classified ones) whose input gradient of the attack's
    own loss on the PyTorch graph is (near) zero. Up to MASKED_SHARE % pass: a well-trained CNN saturates the
    softmax of a few very confident samples (4 of 293 on MNIST), which is no masking. The advice follows the
    cause: an output that ignores the input (retrain), a saturated softmax whose margin still has a gradient
    (defensive distillation: --loss margin), or a gradient that vanishes for every loss (a black-box attack)."""
    losses = (loss,) if loss != "ce" else ("ce", "margin")
    right, zero, spread = _vanishing(model, x, y, losses, floor, batch_size, device)
    n, count = int(right.sum()), int(zero[loss].sum())
    share = 100.0 * count / max(1, n)
    if float(spread) <= floor:
        fix = "the model's output does not depend on its input (a collapsed model): retrain it"
    elif loss == "ce" and 100.0 * int(zero["margin"].sum()) / max(1, n) <= MASKED_SHARE:
        fix = "a saturated softmax, as defensive distillation leaves, while the margin keeps its gradient: " \
              "use --loss margin or dlr"
    else:
        fix = "gradient masking for every loss: use a black-box attack (square) or BPDA through the masking layer"
    return Check("input_gradients", share <= MASKED_SHARE,
                 f"{count} of {n} correctly classified samples ({share:.1f}%, more than {MASKED_SHARE:g}%) have zero "
                 f"or vanishing input gradients of the {loss} loss ({fix})" if share > MASKED_SHARE
                 else f"input gradients of the {loss} loss vanish on {count} of {n} correctly classified samples "
                 f"({share:.1f}%, at most {MASKED_SHARE:g}%: saturated confident samples, no masking)")


def covered_losses(by_loss: dict[str, Check]) -> list[Check]:
    """The `input_gradients` checks of a cascade's losses: a loss whose gradient vanishes (a saturated softmax under
    ce) undermines no number when another attack of the same cascade uses a loss that keeps its gradient (pgd on ce
    beside apgd on dlr, as AutoAttack pairs them): that check passes, saying so. Alone, it keeps its warning."""
    keeping = sorted(loss for loss, c in by_loss.items() if c.passed)
    return [c if c.passed or not keeping else
            replace(c, passed=True, detail=f"{c.detail}; covered: the cascade also attacks with the "
                                           f"{' and '.join(keeping)} loss, whose gradient does not vanish")
            for c in by_loss.values()]


def masking_defense(defense: str, losses: set[str]) -> Check:
    """A defense known to mask the gradient of a loss the attack uses (distillation saturates the softmax)."""
    masked = defense == "distillation" and "ce" in losses
    return Check("masking_defense", not masked, "the bundle was trained with defensive distillation, whose saturated "
                 "softmax hides the ce gradient: use --loss margin (Carlini and Wagner 2017)" if masked
                 else f"defense {defense!r} masks no loss the attack uses")


def prediction_spread(predicted: torch.Tensor, y: torch.Tensor, num_classes: int,
                      classes: tuple[str, ...] = ()) -> Check:
    """Clean predictions concentrated on one class (a collapsed model): every accuracy it keeps is that class's
    share of the labels, and robust-accuracy gains over a baseline mean nothing."""
    top = dominant_class(predicted, y, num_classes)
    name = classes[top.label] if top.label < len(classes) else str(top.label)
    return Check("prediction_spread", not top.collapsed,
                 f"class {name!r} takes {top.share:.0f}% of the clean predictions but {top.true_share:.0f}% of the "
                 "labels: a collapsed, near-constant model whose robust accuracy means nothing; retrain it "
                 "(`robustdeploy train` refuses such a model)" if top.collapsed
                 else f"no class takes more than {top.share:.0f}% of the clean predictions")


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
            transfer_only(list(last.values())), blackbox_far_above_whitebox(cells, attacks)]


def transfer_only(cells: list[dict]) -> Check | None:
    """Deployment numbers that rest on transferred examples alone (crafted on another graph, never checked on the
    deployment): an upper bound that can make a variant look more robust than it is (issue 19)."""
    if not any(c.get("threat") for c in cells):
        return None  # a result written before cells said their threat model
    only = [f"{c['runtime']} eps={c['eps']:g} ({c['threat']})" for c in cells
            if c.get("threat") and all(p.startswith("transfer") for p in c["threat"].split(" + "))
            and not same_graph(c["runtime"], c["threat"])]
    return Check("transfer_only", not only,
                 "robust accuracy from transferred examples only, an upper bound: " + "; ".join(only) +
                 "; attack the deployment itself with --deployment-loop auto (PGD in the loop of each runtime) or "
                 "--attack square" if only else "every robust accuracy includes an attack on that runtime itself")


def same_graph(runtime: str, threat: str) -> bool:
    """The fp32 deployment of the training graph, attacked through that graph (among other sources): the same
    function (export checked their parity), so the examples crafted on torch are white-box ones, not an upper bound."""
    return "transfer from torch" in threat.split(" + ") and runtime.split(":")[-1] in (runtime, "fp32")


def adaptive_patch_weaker(cells: list[dict]) -> Check | None:
    """Behind a defense, an adaptive patch with a lower tSuc than the oblivious one (which ignores the defense) is a
    weak adaptive attack, not robustness: the worst case, which takes both, is the number to read."""
    tsuc = {(c["runtime"], c.get("attack")): c["tsuc"] for c in cells}
    defended = [rt for rt, attack in tsuc if attack == "adaptive"]
    if not defended:
        return None
    weak = [f"{rt}: adaptive {tsuc[rt, 'adaptive']:.2f}% < oblivious {tsuc[rt, 'patch']:.2f}%" for rt in defended
            if tsuc[rt, "adaptive"] < tsuc[rt, "patch"]]
    return Check("adaptive_patch_weaker", not weak,
                 "the adaptive patch reaches less than the oblivious one, a sign of masked or weakly followed "
                 "gradients through the defense; read the worst-case row (both patches), and try more --steps: "
                 + "; ".join(weak) if weak else "the adaptive patch reaches at least the oblivious one's tSuc")


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
