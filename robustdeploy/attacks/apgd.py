"""Auto-PGD (Croce & Hein, ICML 2020, arXiv:2003.01690): PGD whose step size needs no tuning.

Momentum 0.75; the step size starts at 2 * eps and is halved at checkpoints (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) where fewer than rho = 75% of the steps since the last
checkpoint raised the loss, or where neither the step size nor the best loss changed; the iterate then
restarts from the best point. Losses: cross-entropy, DLR (the paper's scale-invariant margin) or the
C&W margin. Per-sample early stop as in PGD. `apgd-t` is AutoAttack's targeted variant (APGD-T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from robustdeploy.attacks.base import ATTACKS, IterativeGradientAttack, Kept, Model, lp_norm, project, rows_view
from robustdeploy.errors import RobustDeployError


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p[1:] if q <= 1})


@ATTACKS.register("apgd")
@dataclass
class APGD(IterativeGradientAttack):
    """APGD-CE by default; `loss="dlr"` gives APGD-DLR. 100 steps as in the paper."""

    steps: int = 100
    momentum: float = 0.75
    rho: float = 0.75

    def _ascent_per_sample(self, x_adv: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        eta = eta.view(-1, *[1] * (grad.dim() - 1))
        if self.norm == "linf":
            return x_adv + eta * grad.sign()
        return x_adv + eta * grad / lp_norm(grad, "l2").clamp_min(1e-12).view_as(eta)

    def _run(self, model, x, y, x_adv, eps, check_last: bool = True):
        """APGD from `x_adv`; returns (adversarial or best-loss iterate, fooled mask).

        The last iterate is always scored (`check_last` is ignored): the result is the best-loss point. Per-sample
        state lives on the device and is compacted with the working set at checks only."""
        marks = set(checkpoints(self.steps))
        kept = Kept.start(x_adv)
        n, device = len(x), x.device
        rows = torch.arange(n, device=device)
        eta = torch.full((n,), 2.0 * eps, device=device)
        current, previous = x_adv, x_adv
        best_loss = torch.full((n,), -float("inf"), device=device)
        best_point, best_grad = x_adv.clone(), torch.zeros_like(x_adv)
        ups = torch.zeros(n, device=device)  # loss increases since the last checkpoint
        loss_at_mark, eta_halved = best_loss.clone(), torch.ones(n, dtype=torch.bool, device=device)
        last_mark = 0
        for step in range(self.steps + 1):
            final = step == self.steps
            current = current.detach().requires_grad_(not final)
            with torch.set_grad_enabled(not final):
                output = model(current)
                loss = self.objective(output, y)
            loss_d = loss.detach()
            checked = self._checks(step)
            if checked:  # keep the fooling iterate of top loss, as the deployment sees it
                every = torch.ones(len(rows), dtype=torch.bool, device=device) if final else None
                kept.update(rows, current.detach(), *self.fooled_as_seen(model, current, x, y, eps, output, loss_d,
                                                                         every))
            improved = loss_d > best_loss
            if step:
                ups = ups + improved.float()
            best_loss = torch.where(improved, loss_d, best_loss)
            best_point = torch.where(rows_view(improved, current), current.detach(), best_point)
            if final:
                break
            self.stats.gradients += len(rows)
            grad, = torch.autograd.grad(loss.sum(), current)
            best_grad = torch.where(rows_view(improved, grad), grad, best_grad)
            current = current.detach()
            if checked and self.early_stop:
                keep = kept.unfooled(rows)
                if not len(keep):
                    break
                if len(keep) < len(rows):
                    rows, x, y, eta, current, previous, grad, best_loss, best_point, best_grad, ups, loss_at_mark, \
                        eta_halved = (t[keep] for t in (rows, x, y, eta, current, previous, grad, best_loss,
                                                        best_point, best_grad, ups, loss_at_mark, eta_halved))
            if step in marks:
                halve = (ups < self.rho * (step - last_mark)) | (~eta_halved & (loss_at_mark >= best_loss))
                eta = torch.where(halve, eta / 2, eta)
                eta_halved, loss_at_mark, ups = halve, best_loss, torch.zeros_like(ups)
                current = torch.where(rows_view(halve, current), best_point, current)
                grad = torch.where(rows_view(halve, grad), best_grad, grad)
                last_mark = step
            z = project(self._ascent_per_sample(current, grad, eta), x, eps, self.norm)
            a = 1.0 if step == 0 else self.momentum
            nxt = current + a * (z - current) + (1 - a) * (current - previous)
            previous, current = current, project(nxt, x, eps, self.norm)
        kept.fill(rows, best_point)
        return kept.best, kept.fooled


@dataclass(frozen=True)
class TargetedDLR:
    """Criterion of APGD-T: the targeted DLR loss (Croce & Hein 2020), (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2),
    toward `targets`; the attack's `y` are row indices into `labels` and `targets`; success is misclassification."""

    labels: torch.Tensor
    targets: torch.Tensor

    def loss(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        top, last = logits.sort(1, descending=True).values, logits.shape[1] - 1
        scale = top[:, 0] - (top[:, min(2, last)] + top[:, min(3, last)]) / 2
        pair = logits.gather(1, torch.stack([self.targets[rows], self.labels[rows]], 1))
        return (pair[:, 0] - pair[:, 1]) / (scale + 1e-12)

    def fooled(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) != self.labels[rows]


@ATTACKS.register("apgd-t")
@dataclass
class APGDTargeted(APGD):
    """AutoAttack's APGD-T: APGD on the targeted DLR loss toward each of the `targets` (9) most likely wrong classes
    of the clean image in turn, on the samples still classified correctly as deployed."""

    loss: str = "dlr"
    targets: int = 9
    own_criterion: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "dlr":
            raise RobustDeployError("apgd-t optimises the targeted DLR loss; drop the loss or use apgd:LOSS")
        if self.targets < 1:
            raise RobustDeployError(f"apgd-t needs targets >= 1, got {self.targets}")

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        with torch.no_grad():
            clean = model(x)
            todo = self.verdict(model)(x).argmax(1) == y
        ranked = clean.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        result = x.clone()
        for k in range(min(self.targets, clean.shape[1] - 1)):
            index = todo.nonzero().flatten()  # one host synchronisation per target
            if not len(index):
                break
            self.criterion = TargetedDLR(y[index], ranked[index, k])
            try:
                adv = super().perturb(model, x[index], torch.arange(len(index), device=x.device), eps)
            finally:
                self.criterion = None
            result[index] = adv
            with torch.no_grad():
                todo[index] = self.verdict(model)(self.seen(adv, x[index], eps)).argmax(1) == y[index]
        return result
