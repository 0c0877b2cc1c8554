"""Adaptive attack on the squeeze detector: fool the classifier *and* keep the squeeze score under the threshold.

Built the way feature squeezing was broken (He et al., WOOT 2017; Carlini & Wagner, AISec 2017) and as
Tramèr et al. (NeurIPS 2020, "On adaptive attacks to adversarial example defenses") recommend:
- a logit-space, targeted objective: for a target class t, the image and every squeezed view of it minimise
  the C&W margin max_{j != t} z_j - z_t down to -kappa. Logits do not saturate the way the L1 distance between
  two softmaxes does; once every view predicts t confidently their softmaxes agree and the score falls, and
  `lam` times the score's excess over the threshold finishes the job (a constraint already met is not
  optimised, as Tramèr et al. advise: a plain score penalty fights the margin where the threshold is loose);
  the penalty starts at `penalty_from` (0.9) times the threshold, so iterates keep a margin below it that the
  8-bit rounding of the final image does not eat;
- several targets: the `targets` most likely wrong classes of the clean image, tried in turn, and `restarts`
  starts each (the first from x, the others random); a sample leaves as soon as one attempt succeeds;
- any registered gradient attack as the inner optimiser (`inner`: pgd, the default, apgd or fgsm), driven on
  the objective above through a `Criterion` instead of its own loss, its rows' labels and targets held there;
  it stops a sample at the first iterate that evades, judged as deployed;
- BPDA (Athalye et al., ICML 2018): bit-depth reduction and the median filter pass the gradient straight
  through (identity backward, exact forward); resampling is linear and differentiated as it is;
- two optimisers per target and start, the stronger kept per sample (issue 21): the inner attack with its own
  step size (PGD: 2.5 * eps / steps), and, for L-inf, signed steps decaying geometrically from eps / 4 to half an
  8-bit grid step: large steps cross the ball, small ones settle on the grid point that evades (an independent
  BPDA attack built that way evaded twice as often as the inner attack alone on the 1-bit + 2x2 median squeezer);
- success judged as deployed: the iterate realised to 8 bits is misclassified and its exact score is at most
  the threshold; the evaluation hands the attack the detector on the 8-bit grid, so every gradient is taken at
  the rounded point (straight through the rounding). `steps` go to each optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustdeploy.attacks.base import ATTACKS, FixedBudgetAttack, IterativeGradientAttack, Model, project
from robustdeploy.defenses.base import straight_through
from robustdeploy.defenses.squeeze import BitDepth, MedianFilter, SqueezeDetector, squeeze_score
from robustdeploy.errors import RobustDeployError

NAME = "squeeze-adaptive"
REVISION = 4  # part of the key of cached adaptive sets: raise it whenever the objective or the loop changes
DECAY_FROM = 0.25  # the decaying optimiser's first step, times eps
DECAY_TO = 0.5 / 255  # its last step: half an 8-bit grid step


class DetectorView(torch.nn.Module):
    """The detector as the adaptive attacker sees it: pixels -> (logits of x (N, C), logits of each squeezed
    view (N, V, C)); non-differentiable squeezers pass the gradient straight through, forward values exact."""

    def __init__(self, detector: SqueezeDetector) -> None:
        super().__init__()
        self.detector, self.threshold = detector, detector.threshold

    def squeezed(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [straight_through(x, s) if isinstance(s, BitDepth | MedianFilter) else s(x)
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


@dataclass(frozen=True)
class Evasion:
    """The adaptive objective as an inner attack's criterion (`attacks.base.Criterion`): the attack's `y` are row
    indices into `labels` and `targets`; its loss is minus the objective, success is fooled and undetected."""

    labels: torch.Tensor
    targets: torch.Tensor
    kappa: float
    lam: float
    threshold: float
    penalty_from: float = 1.0

    def loss(self, output: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        logits, squeezed = output
        margins = target_margins(logits, squeezed, self.targets[rows]).clamp(min=-self.kappa).sum(1)
        excess = squeeze_score(logits, squeezed) - self.penalty_from * self.threshold
        return -(margins + self.lam * excess.clamp(min=0))

    def fooled(self, output: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        logits, squeezed = output
        return (logits.argmax(1) != self.labels[rows]) & (squeeze_score(logits, squeezed) <= self.threshold)


def _drivable(cls: type) -> bool:
    """Whether an attack class can optimise the evasion objective as the inner optimiser."""
    return issubclass(cls, IterativeGradientAttack) and not cls.own_criterion


@dataclass
class AdaptiveSqueezeAttack(FixedBudgetAttack):
    """Targeted logit-space BPDA attack on x and every squeezed view; `model` is a `DetectorView` (or it on the
    8-bit grid), `threshold` the detector's. Defaults: inner PGD, 200 steps, 3 targets, 2 restarts, kappa 10,
    lam 10, the score penalised from 0.9 x threshold, the decaying optimiser beside the inner one (L-inf)."""

    inner: str = "pgd"
    steps: int = 200
    targets: int = 3
    restarts: int = 2
    kappa: float = 10.0
    lam: float = 10.0
    threshold: float = 0.0
    penalty_from: float = 0.9
    decay: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.targets < 1 or self.restarts < 1:
            raise RobustDeployError("the adaptive detector attack needs steps, targets and restarts >= 1")
        if self.kappa < 0 or self.lam < 0 or not 0 < self.penalty_from <= 1:
            raise RobustDeployError("the adaptive detector attack needs kappa >= 0, lam >= 0 and penalty_from in "
                                    "(0, 1]")
        if not _drivable(ATTACKS.get(self.inner)):
            usable = [n for n in ATTACKS.names() if _drivable(ATTACKS.get(n))]
            raise RobustDeployError(f"the adaptive detector attack's inner optimiser must be a fixed-budget gradient "
                                    f"attack ({', '.join(usable)}), not {self.inner!r}")

    def optimiser(self, attempt: int, random_start: bool) -> IterativeGradientAttack:
        """The inner attack for one target and start, seeded by the attempt."""
        attack = ATTACKS.create(self.inner, norm=self.norm, steps=self.steps, seed=self.seed + attempt,
                                random_start=random_start, restarts=1)
        attack.realiser = self.realiser
        return attack

    def decaying(self, model: Model, x: torch.Tensor, criterion: Evasion, eps: float, attempt: int,
                 random_start: bool) -> torch.Tensor:
        """Signed steps on the evasion objective decaying geometrically from DECAY_FROM * eps to DECAY_TO; each
        sample's first iterate that evades as deployed (else its last)."""
        rows = torch.arange(len(x), device=x.device)
        adv = x.clone()
        if random_start:
            noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(self.seed + attempt)) * 2 - 1
            adv = project(x + noise.to(x.device) * eps, x, eps, self.norm)
        first = DECAY_FROM * eps
        last = min(first, DECAY_TO)
        for step in range(self.steps):
            alpha = first * (last / first) ** (step / max(1, self.steps - 1))
            current = adv[rows].detach().requires_grad_(True)
            grad, = torch.autograd.grad(criterion.loss(model(current), rows).sum(), current)
            self.stats.gradients += len(rows)
            moved = project(current.detach() + alpha * grad.sign(), x[rows], eps, self.norm)
            adv[rows] = moved
            with torch.no_grad():
                evaded = criterion.fooled(model(self.seen(moved, x[rows], eps)), rows)
            rows = rows[~evaded]
            if not len(rows):
                break
        return adv

    def _outcome(self, model: Model, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Rank of what the deployment receives: 2 fooled and undetected, 1 fooled, 0 neither."""
        with torch.no_grad():
            logits, squeezed = model(self.seen(adv, x, eps))
        fooled = logits.argmax(1) != y
        return fooled.long() * (1 + (squeeze_score(logits, squeezed) <= self.threshold).long())

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        with torch.no_grad():
            clean = model(x)[0]
        ranked = clean.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        best, rank = x.clone(), self._outcome(model, x, x, y, eps)
        for k in range(min(self.targets, clean.shape[1] - 1)):
            for restart in range(self.restarts):
                todo = (rank < 2).nonzero().flatten()
                if not len(todo):
                    return best
                attempt = k * self.restarts + restart
                attack = self.optimiser(attempt, random_start=restart > 0)
                criterion = Evasion(y[todo], ranked[todo, k], self.kappa, self.lam, self.threshold, self.penalty_from)
                attack.criterion = criterion
                candidates = [attack.perturb(model, x[todo], torch.arange(len(todo), device=x.device), eps)]
                self.stats.gradients += attack.stats.gradients
                if self.decay and self.norm == "linf" and eps > 0:
                    candidates.append(self.decaying(model, x[todo], criterion, eps, attempt, restart > 0))
                for adv in candidates:  # the stronger variant per sample
                    found = self._outcome(model, adv, x[todo], y[todo], eps)
                    better = found > rank[todo]
                    best[todo[better]], rank[todo[better]] = adv[better], found[better]
        return best
