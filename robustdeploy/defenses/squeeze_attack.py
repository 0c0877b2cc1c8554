"""Adaptive PGD against the squeeze detector: fool the classifier *and* keep the squeeze score under the threshold.

Maximises min(margin, kappa) - lam * score (the combined loss of Carlini & Wagner, AISec 2017, and He et al.,
WOOT 2017, who broke feature squeezing this way), with the gradient passed straight through the bit-depth
rounding (BPDA, Athalye et al., ICML 2018); the median and resampling squeezers are differentiable as built.
A sample counts as evaded when it is misclassified and its exact score is at most the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustdeploy.attacks.base import FixedBudgetAttack, Model, loss_per_sample, lp_norm, project
from robustdeploy.defenses.squeeze import SqueezeDetector
from robustdeploy.errors import RobustDeployError


class DetectorView(torch.nn.Module):
    """The detector as the adaptive attacker sees it: pixels -> (logits, score), BPDA through bit depth.

    BPDA changes only the backward pass, so the forward values are the detector's own."""

    def __init__(self, detector: SqueezeDetector) -> None:
        super().__init__()
        self.detector, self.threshold = detector, detector.threshold
        detector.set_bpda(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.scores(x)


@dataclass
class AdaptiveSqueezePGD(FixedBudgetAttack):
    """L-inf/L2 PGD on the detector; step defaults follow Madry et al.'s PGD (2.5 * eps / steps, random start).

    `model` maps pixels to (logits, score), e.g. a `DetectorView`; `threshold` is the detector's."""

    steps: int = 100
    rel_step: float = 2.5
    lam: float = 10.0
    kappa: float = 1.0
    threshold: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.lam < 0:
            raise RobustDeployError("the adaptive detector attack needs steps >= 1 and lam >= 0")

    def _evaded(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits, score = model(x)
        return (logits.argmax(1) != y) & (score <= self.threshold)

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        alpha = self.rel_step * eps / self.steps
        if self.norm == "linf":
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        else:
            noise = torch.randn(x.shape, generator=generator)
            noise = noise * eps * 0.5 / lp_norm(noise, "l2").view(-1, *[1] * (x.dim() - 1))
        current = project(x + noise.to(x.device), x, eps, self.norm)
        best = x.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            evaded = self._evaded(model, self.seen(current, x, eps), y) & ~done
            best[evaded], done = current[evaded], done | evaded
            current = current.detach().requires_grad_(True)
            logits, score = model(current)
            margin = loss_per_sample(logits, y, "margin").clamp(max=self.kappa)
            grad, = torch.autograd.grad((margin - self.lam * score).sum(), current)
            self.stats.gradients += len(x)
            if self.norm == "linf":
                step = alpha * grad.sign()
            else:
                step = alpha * grad / lp_norm(grad, "l2").clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
            current = project(current.detach() + step, x, eps, self.norm)
        evaded = self._evaded(model, self.seen(current, x, eps), y) & ~done
        best[evaded], done = current[evaded], done | evaded
        best[~done] = current[~done]
        return best
