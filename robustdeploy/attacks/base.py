"""Attack contracts (foolbox 3's split) and the shared gradient loop: batching, early stop, projection.

A fixed-budget attack maps (model, x, y, eps) to adversarial inputs inside the eps-ball and [0, 1].
Samples the model already gets wrong are never attacked. With early stop a sample leaves the working set
as soon as an iterate fools the model (that iterate is kept); without it the attack runs every step and
keeps the fooling iterate of highest loss. The evaluation core hands attacks the model *on the 8-bit grid*
(`evaluation.grid.OnGrid`), so "fools the model" means "fools it after rounding".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.registry import Registry

NORMS = ("linf", "l2")
Model = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AttackStats:
    """Work an attack did: gradient (forward+backward) evaluations and forward-only queries, per sample."""

    gradients: int = 0
    queries: int = 0

    def to_dict(self) -> dict:
        return {"gradients": self.gradients, "queries": self.queries}


@dataclass
class Attack(ABC):
    """Knobs of the method live in the constructor; the budget is an argument of the call."""

    norm: str = "linf"
    stats: AttackStats = field(default_factory=AttackStats, init=False, repr=False, compare=False)
    # What the deployment receives for an iterate (adv, x, eps) -> adv, set by the evaluation core; gradient
    # attacks count a sample as fooled only when this realised iterate fools the model.
    realiser: Callable | None = field(default=None, init=False, repr=False, compare=False)
    # The deployment's logits for a batch of (realised) inputs, set by the evaluation core for a deployment-in-the-loop
    # attack: success is judged on it, while gradients come from the attacked model (a PyTorch twin of the deployment).
    judge: Callable | None = field(default=None, init=False, repr=False, compare=False)
    # The deployment's input step (1/255 on the 8-bit grid), set by the evaluation core with `realiser`: query-based
    # attacks search in whole steps of it, since rounding erases anything smaller.
    quantum: float | None = field(default=None, init=False, repr=False, compare=False)

    needs: ClassVar[Capability] = Capability.GRADIENTS
    norms: ClassVar[tuple[str, ...]] = NORMS

    def __post_init__(self) -> None:
        if self.norm not in self.norms:
            raise RobustDeployError(f"{type(self).__name__} supports {', '.join(self.norms)}, not {self.norm!r}")

    def params(self) -> dict:
        hidden = ("stats", "realiser", "judge", "criterion", "quantum")
        return {k: v for k, v in self.__dict__.items() if k not in hidden}

    def seen(self, adv: torch.Tensor, x: torch.Tensor, eps: float | None) -> torch.Tensor:
        """`adv` as the deployment receives it (itself where no realiser is set)."""
        return adv if self.realiser is None else self.realiser(adv, x, eps)

    def verdict(self, model: Model) -> Model:
        """What decides success: the deployment (`judge`) where one is set, else the attacked model itself."""
        return model if self.judge is None else lambda z: self.judge(z).to(z.device)


def check_eps(eps: float, norm: str, input_dim: int) -> None:
    limit = 1.0 if norm == "linf" else input_dim**0.5
    if not 0.0 <= eps <= limit:
        raise RobustDeployError(f"eps {eps:g} is outside [0, {limit:.3g}] for the {norm} norm on pixels in [0, 1]")


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project onto the eps-ball around x (eps: one budget, or one per sample), then onto the [0, 1] box."""
    delta = x_adv - x
    shape = (-1, *[1] * (x.dim() - 1))
    if norm == "linf":
        delta = delta.clamp(-eps, eps) if not torch.is_tensor(eps) else \
            torch.minimum(delta.abs(), eps.view(shape)) * delta.sign()
    else:
        scale = (eps / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale.view(shape)
    return (x + delta).clamp(0.0, 1.0)


def loss_per_sample(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Loss to *maximise*: cross-entropy, the C&W margin max_{j != y} z_j - z_y (Carlini & Wagner 2017),
    or DLR, the margin divided by z_pi1 - z_pi3 so that it ignores the logits' scale (Croce & Hein 2020)."""
    if loss == "ce":
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    margin = other.amax(1) - true
    if loss == "dlr":
        top = logits.topk(3, dim=1).values
        return margin / (top[:, 0] - top[:, 2] + 1e-12)
    return margin


LOSSES = ("ce", "margin", "dlr")


class Criterion(Protocol):
    """What a gradient attack maximises and what counts as success, from the model's output for a batch and the
    batch's labels; set in place of the classifier's loss and misclassification by an attack that drives another
    (e.g. the adaptive detector attack, whose model outputs several views and whose `y` are row indices)."""

    def loss(self, output, y: torch.Tensor) -> torch.Tensor: ...

    def fooled(self, output, y: torch.Tensor) -> torch.Tensor: ...


class FixedBudgetAttack(Attack):
    """Returns adversarial inputs with ||adv - x|| <= eps and pixels in [0, 1].

    `model` maps pixels to logits: an nn.Module for gradient attacks; for SCORES/DECISIONS attacks any
    callable (e.g. `Runtime.logits`), queried without gradients. Such attacks set `queries_per_sample`.
    """

    queries_per_sample: torch.Tensor | None = None
    iterations_per_sample: torch.Tensor | None = None  # an iterative query-based attack's iterations (HopSkipJump)

    @abstractmethod
    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor: ...


class MinimalNormAttack(Attack):
    """Returns, per sample, the smallest adversarial it found; x itself where it found none
    (or the sample is already misclassified). No budget argument: the norm is the result."""

    @abstractmethod
    def minimize(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.empty(0, dtype=torch.long, device=x.device)


def rows_view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample mask shaped to broadcast over a batch like `like`."""
    return mask.view(-1, *[1] * (like.dim() - 1))


@dataclass
class Kept:
    """Per sample of a batch, on its device: the example kept (the fooling iterate of highest loss as the deployment
    receives it, else the iterate the attack ends on), that loss, and whether any checked iterate fooled.
    Updated by rows with tensor ops only, so keeping it costs no host synchronisation."""

    best: torch.Tensor
    strongest: torch.Tensor
    fooled: torch.Tensor

    @classmethod
    def start(cls, x_adv: torch.Tensor) -> Kept:
        n, device = len(x_adv), x_adv.device
        return cls(x_adv.detach().clone(), torch.full((n,), -float("inf"), device=device),
                   torch.zeros(n, dtype=torch.bool, device=device))

    def update(self, rows: torch.Tensor, iterate: torch.Tensor, wrong: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep `iterate` for the `rows` it fools with a higher loss than the one kept."""
        better = wrong & (loss > self.strongest[rows])
        self.best[rows] = torch.where(rows_view(better, iterate), iterate, self.best[rows])
        self.strongest[rows] = torch.where(better, loss, self.strongest[rows])
        self.fooled[rows] = self.fooled[rows] | better

    def fill(self, rows: torch.Tensor, iterate: torch.Tensor) -> None:
        """`rows` that no checked iterate fooled end on `iterate`."""
        left = ~self.fooled[rows]
        self.best[rows] = torch.where(rows_view(left, iterate), iterate, self.best[rows])

    def unfooled(self, rows: torch.Tensor) -> torch.Tensor:
        """Positions in `rows` still to attack (a host synchronisation: called only at a check)."""
        return (~self.fooled[rows]).nonzero().flatten()


@dataclass
class IterativeGradientAttack(FixedBudgetAttack):
    """Shared loop of FGSM/PGD: random start, `steps` ascent steps, restarts, early stop per sample.

    The loop stays on the attack's device: every `check_every` steps (and at the last) the iterate is checked as
    the deployment receives it and fooled samples leave the working set (with early stop); between checks no
    tensor is read on the host. With a `judge` every check is a round trip to the deployment."""

    steps: int = 40
    step_size: float | None = None  # absolute; default rel_step * eps / steps
    rel_step: float = 2.5
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    early_stop: bool = True
    seed: int = 0
    check_every: int = 1
    criterion: Criterion | None = field(default=None, init=False, repr=False, compare=False)  # None: classify
    own_criterion: ClassVar[bool] = False  # sets `criterion` itself (so another attack cannot drive it)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.restarts < 1 or self.check_every < 1:
            raise RobustDeployError("steps, restarts and check_every must be at least 1")
        if self.loss not in LOSSES:
            raise RobustDeployError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")

    def objective(self, output, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to maximise: `loss` of the logits, or the criterion's."""
        return loss_per_sample(output, y, self.loss) if self.criterion is None else self.criterion.loss(output, y)

    def misled(self, output, y: torch.Tensor) -> torch.Tensor:
        """Per sample, whether `output` is a success: misclassified, or the criterion's success."""
        return output.argmax(1) != y if self.criterion is None else self.criterion.fooled(output, y)

    def fooled_as_seen(self, model: Model, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                       logits: torch.Tensor, loss: torch.Tensor, candidates: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fooled, loss) of each iterate as the deployment receives it. `logits` and `loss` are the float
        iterate's; only `candidates` (default: the iterates whose float version fools; every iterate when a `judge`
        decides) are re-checked after realisation, on the judge where one is set."""
        loss = loss.detach().clone()
        wrong = self.misled(logits, y)
        if self.realiser is None and self.judge is None:
            return wrong, loss
        if candidates is None and self.judge is not None:  # every iterate: no subset to pick
            with torch.no_grad():
                seen = self.verdict(model)(self.seen(adv.detach(), x, eps))
            return self.misled(seen, y), self.objective(seen, y)
        index = (wrong if candidates is None else candidates).nonzero().flatten()
        wrong = torch.zeros_like(wrong)
        if len(index):
            with torch.no_grad():
                seen = self.verdict(model)(self.seen(adv[index].detach(), x[index], eps))
            wrong[index] = self.misled(seen, y[index])
            loss[index] = self.objective(seen, y[index])
        return wrong, loss

    def diversifies(self) -> bool:
        """Whether gradients are taken through a random input transform (DI, `BoostedGradientAttack`)."""
        return False

    def diversified(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def direction(self, grad: torch.Tensor, velocity: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The ascent direction from the gradient (the momentum of MI-FGSM overrides it; `velocity[rows]` is the
        per-sample state)."""
        return grad

    def _alpha(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else self.rel_step * eps / self.steps

    def _start(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        if not self.random_start or eps == 0:
            return x.clone()
        if self.norm == "linf":
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        else:
            direction = torch.randn(x.shape, generator=generator)
            direction /= lp_norm(direction, "l2").view(-1, *[1] * (x.dim() - 1))
            noise = direction * eps * torch.rand(len(x), generator=generator).view(-1, *[1] * (x.dim() - 1))
        return project(x + noise.to(x.device), x, eps, self.norm)

    def _ascent(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        if self.norm == "linf":
            return x_adv + alpha * grad.sign()
        norm = lp_norm(grad, "l2").clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        return x_adv + alpha * grad / norm

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        result = x.clone()
        # Never attack a sample that is already wrong (with early stop). Without a random start the first step's
        # forward pass is the clean one, and _run leaves wrong samples at x, so no separate clean pass is needed.
        # Without early stop (a transfer attack) every sample is attacked: the target may get it right.
        todo = self._unfooled(model, x, y) if self.random_start and self.early_stop else \
            torch.ones(len(x), dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            index = todo.nonzero().flatten()  # one host synchronisation per restart
            if not len(index):
                break
            start = self._start(x, eps, generator)  # drawn for the full batch: subsets stay reproducible
            last = restart == self.restarts - 1
            adv, fooled = self._run(model, x[index], y[index], start[index], eps, check_last=not last)
            result[index] = adv
            todo[index] = todo[index] & ~fooled
        return result

    @torch.no_grad()
    def _unfooled(self, model: Model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        if self.criterion is None:
            return predict(self.verdict(model), x, batch_size) == y
        return torch.cat([~self.misled(model(x[i : i + batch_size]), y[i : i + batch_size])
                          for i in range(0, len(x), batch_size)] or [torch.zeros(0, dtype=torch.bool, device=x.device)])

    def _checks(self, step: int) -> bool:
        """Whether the iterate of `step` is checked as received (and the working set compacted after it)."""
        return step == self.steps or step % self.check_every == 0

    def _run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
             eps: float, check_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascent from `x_adv`; returns (adversarial or last iterate, fooled mask).

        Without `check_last` the last iterate is returned unscored (the caller re-scores every result), which
        saves one forward pass; the fooled mask then misses samples fooled only by that iterate.
        """
        alpha = self._alpha(eps)
        kept = Kept.start(x_adv)
        rows = torch.arange(len(x), device=x.device)  # the batch rows still worked on, with their x, y, iterate
        current, velocity = x_adv, torch.zeros_like(x_adv)
        for step in range(self.steps + 1):
            final = step == self.steps
            if final and not check_last:
                break
            current = current.detach().requires_grad_(not final)
            with torch.set_grad_enabled(not final):
                output = model(current)
                loss = self.objective(output, y)
                if not final:
                    ascent = self.objective(model(self.diversified(current)), y) if self.diversifies() else loss
            checked = self._checks(step)
            if checked:
                every = torch.ones(len(rows), dtype=torch.bool, device=rows.device) if final else None
                seen = self.fooled_as_seen(model, current, x, y, eps, output, loss, every)
                kept.update(rows, current.detach(), *seen)
            if final:
                break
            self.stats.gradients += len(rows)
            grad, = torch.autograd.grad(ascent.sum(), current)
            grad = self.direction(grad, velocity, rows)
            if checked and self.early_stop:
                keep = kept.unfooled(rows)
                if not len(keep):
                    break
                if len(keep) < len(rows):
                    rows, x, y, current, grad = rows[keep], x[keep], y[keep], current[keep], grad[keep]
            current = project(self._ascent(current.detach(), grad, alpha), x, eps, self.norm)
        kept.fill(rows, current.detach())
        return kept.best, kept.fooled


@dataclass
class BoostedGradientAttack(IterativeGradientAttack):
    """The transfer boosters as options of the iterative gradient loop: momentum `decay` (MI-FGSM, Dong et al., CVPR
    2018, arXiv:1710.06081: g <- decay * g + grad / ||grad||_1, step along g; 1.0 in the paper) and input diversity
    (DI, Xie et al., CVPR 2019, arXiv:1803.06978: with probability `diversity_prob`, 0.5 in the paper, the gradient is
    taken through a random resize to `resize_rate`..1 of the size and a random zero pad back). Off by default."""

    decay: float = 0.0
    diversity_prob: float = 0.0
    resize_rate: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decay < 0 or not 0 <= self.diversity_prob <= 1 or not 0 < self.resize_rate <= 1:
            raise RobustDeployError("decay must be >= 0, diversity_prob in [0, 1] and resize_rate in (0, 1]")

    def diversifies(self) -> bool:
        return self.diversity_prob > 0

    def diversified(self, x: torch.Tensor) -> torch.Tensor:
        """DI's transform (as torchattacks' DIFGSM applies it to inputs of a fixed size), drawn per batch."""
        if x.dim() != 4 or float(torch.rand(())) >= self.diversity_prob:
            return x
        size = x.shape[-1]
        small = int(size * self.resize_rate)
        if small >= size:
            return x
        side = int(torch.randint(small, size, ()))
        shrunk = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        top, left = int(torch.randint(0, size - side + 1, ())), int(torch.randint(0, size - side + 1, ()))
        return torch.nn.functional.pad(shrunk, (left, size - side - left, top, size - side - top))

    def direction(self, grad: torch.Tensor, velocity: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.decay == 0:
            return grad
        norm = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        velocity[rows] = self.decay * velocity[rows] + grad / norm
        return velocity[rows]


ATTACKS: Registry[Attack] = Registry("attack")
