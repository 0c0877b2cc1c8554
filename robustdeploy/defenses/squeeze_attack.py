"""Adaptive attack on the squeeze detector: fool the classifier *and* keep the squeeze score under the threshold.

Built the way feature squeezing was broken (He et al., WOOT 2017; Carlini & Wagner, AISec 2017) and as
Tramèr et al. (NeurIPS 2020, "On adaptive attacks to adversarial example defenses") recommend:
- a logit-space, targeted objective: for a target class t, the image and every squeezed view of it minimise
  the C&W margin max_{j != t} z_j - z_t down to -kappa. Logits do not saturate the way the L1 distance between
  two softmaxes does; once every view predicts t confidently their softmaxes agree and the score falls, and
  `lam` times the score's excess over the threshold finishes the job (a constraint already met is not
  optimised, as Tramèr et al. advise: a plain score penalty fights the margin where the threshold is loose);
- several targets: the `targets` most likely wrong classes of the clean image, tried in turn, and `restarts`
  starts each (the first from x, the others random); a sample leaves as soon as one attempt succeeds;
- BPDA (Athalye et al., ICML 2018): bit-depth reduction and the median filter pass the gradient straight
  through (identity backward, exact forward); resampling is linear and differentiated as it is;
- success judged as deployed: the iterate realised to 8 bits is misclassified and its exact score is at most
  the threshold. Step size: cosine decay from eps / 4 over `steps` (sign steps for L-inf, unit-L2 steps for L2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustdeploy.attacks.base import FixedBudgetAttack, Model, lp_norm, project
from robustdeploy.defenses.squeeze import BitDepth, MedianFilter, SqueezeDetector, squeeze_score
from robustdeploy.errors import RobustDeployError

NAME = "squeeze-adaptive"
REVISION = 2  # part of the key of cached adaptive sets: raise it whenever the objective or the loop changes


class _StraightThrough(torch.autograd.Function):
    """squeezer(x) forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, squeezer: torch.nn.Module) -> torch.Tensor:  # type: ignore[override]
        return squeezer(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class DetectorView(torch.nn.Module):
    """The detector as the adaptive attacker sees it: pixels -> (logits of x (N, C), logits of each squeezed
    view (N, V, C)); non-differentiable squeezers pass the gradient straight through, forward values exact."""

    def __init__(self, detector: SqueezeDetector) -> None:
        super().__init__()
        self.detector, self.threshold = detector, detector.threshold

    def squeezed(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_StraightThrough.apply(x, s) if isinstance(s, BitDepth | MedianFilter) else s(x)
                for s in self.detector.squeezers]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classify = self.detector.classifier
        return classify(x), torch.stack([classify(v) for v in self.squeezed(x)], 1)


def target_margins(logits: torch.Tensor, squeezed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per view (x first, then each squeezed view), max_{j != t} z_j - z_t: negative where the view says t."""
    views = torch.cat([logits[:, None], squeezed], 1)
    index = target.view(-1, 1, 1).expand(-1, views.shape[1], 1)
    true = views.gather(2, index).squeeze(2)
    other = views.scatter(2, index, float("-inf")).amax(2)
    return other - true


@dataclass
class AdaptiveSqueezeAttack(FixedBudgetAttack):
    """Targeted logit-space BPDA attack on x and every squeezed view; `model` is a `DetectorView` (or it on the
    8-bit grid), `threshold` the detector's. Defaults: 200 steps, 3 targets, 2 restarts, kappa 10, lam 10."""

    steps: int = 200
    rel_step: float = 2.5
    targets: int = 3
    restarts: int = 2
    kappa: float = 10.0
    lam: float = 10.0
    threshold: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.targets < 1 or self.restarts < 1:
            raise RobustDeployError("the adaptive detector attack needs steps, targets and restarts >= 1")
        if self.kappa < 0 or self.lam < 0:
            raise RobustDeployError("the adaptive detector attack needs kappa >= 0 and lam >= 0")

    def _outcome(self, model: Model, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rank, score) of what the deployment receives: 2 fooled and undetected, 1 fooled, 0 neither."""
        with torch.no_grad():
            logits, squeezed = model(self.seen(adv, x, eps))
        score = squeeze_score(logits, squeezed)
        fooled = logits.argmax(1) != y
        return fooled.long() * (1 + (score <= self.threshold).long()), score

    def _start(self, x: torch.Tensor, eps: float, restart: int, generator: torch.Generator) -> torch.Tensor:
        if restart == 0 or eps == 0:
            return x.clone()
        if self.norm == "linf":
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        else:
            noise = torch.randn(x.shape, generator=generator)
            noise = noise * eps * 0.5 / lp_norm(noise, "l2").view(-1, *[1] * (x.dim() - 1))
        return project(x + noise.to(x.device), x, eps, self.norm)

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            clean = model(x)[0]
        ranked = clean.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        best, rank = x.clone(), self._outcome(model, x, x, y, eps)[0]
        for k in range(min(self.targets, clean.shape[1] - 1)):
            for restart in range(self.restarts):
                start = self._start(x, eps, restart, generator)  # drawn for the full batch: reproducible
                todo = (rank < 2).nonzero().flatten()
                if not len(todo):
                    return best
                adv, found = self._run(model, x[todo], y[todo], ranked[todo, k], start[todo], eps)
                better = found > rank[todo]
                best[todo[better]], rank[todo[better]] = adv[better], found[better]
        return best

    def _run(self, model: Model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, current: torch.Tensor,
             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Descent toward `target`; per sample the first iterate that evades, else the last one that fools, else
        the last iterate; with its rank."""
        best, rank = current.clone(), torch.zeros(len(x), dtype=torch.long, device=x.device)
        work = torch.arange(len(x), device=x.device)
        for step in range(self.steps + 1):
            found, _ = self._outcome(model, current, x[work], y[work], eps)
            keep = (found >= rank[work]) & (rank[work] < 2)
            best[work[keep]], rank[work[keep]] = current.detach()[keep], found[keep]
            active = found < 2
            if step == self.steps or not active.any():
                break
            work, current = work[active], current.detach()[active].requires_grad_(True)
            logits, squeezed = model(current)
            objective = target_margins(logits, squeezed, target[work]).clamp(min=-self.kappa).sum(1) \
                + self.lam * (squeeze_score(logits, squeezed) - self.threshold).clamp(min=0)
            grad, = torch.autograd.grad(objective.sum(), current)
            self.stats.gradients += len(work)
            alpha = self.rel_step * eps / self.steps
            if self.norm == "linf":
                move = grad.sign()
            else:
                move = grad / lp_norm(grad, "l2").clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
            current = project(current.detach() - alpha * move, x[work], eps, self.norm)
        return best, rank
