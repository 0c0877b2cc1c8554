"""Adversarial training with a choice of inner maximisation (`--inner`), all L-inf in pixel units.

* `madry` (default; Madry et al., ICLR 2018, arXiv:1706.06083): PGD from a uniform random start in the
  eps-ball, `attack_steps` signed-gradient steps of 2.5 * eps / steps on the cross-entropy, and the model is
  trained on the FINAL iterate of EVERY sample, also the ones it already gets wrong. The paper trains MNIST
  with 40 steps at eps 0.3.
* `early-stop`: a registered gradient attack (`--train-attack`, PGD by default) with per-sample early stop:
  each sample is trained on its first iterate the model misclassifies, and samples it already gets wrong are
  left unperturbed. This is a curriculum, in the spirit of friendly adversarial training (Zhang et al., ICML
  2020, arXiv:2002.11242): early in training most samples are fooled within a step or two, so the model sees
  mild examples near its boundary and learns the clean task first; as it grows robust the examples grow
  stronger by themselves. It costs fewer gradient steps and keeps clean accuracy higher, but the model is
  never trained on the strongest point of the ball, so it is a weaker defense than `madry` at the same eps.
* `trades` (Zhang et al., ICML 2019, arXiv:1901.08573): the inner step maximises KL(f(x) || f(x')) from
  x + 0.001 * N(0, 1) (no label needed), and the outer loss is CE(f(x), y) + beta * KL(f(x) || f(x')), beta 6
  as in the paper: an explicit trade-off between clean accuracy and robustness.

The inner maximisation runs with the model in eval mode (batch-norm statistics frozen), as the papers' code does.

Warm-up (issue 21): at eps 0.3 on MNIST, `madry` with Adam at 1e-3 from the first batch converged to a constant
classifier (loss ln 10 from epoch 1). By default `madry` therefore ramps eps linearly from 0 to its value over the
first fifth of the epochs (at least one; `--eps-ramp EPOCHS`, as Gowal et al. 2018, arXiv:1810.12715, ramp their
budget) and anneals the learning rate on a cosine (`--lr-schedule`); the step size follows the ramped eps. The
paper's MNIST setting is reachable: `--eps-ramp 0 --lr-schedule constant --lr 1e-4 --attack-steps 40
--attack-step-size 0.01 --batch-size 50`. The other inner maximisations keep their papers' defaults (no ramp,
constant rate) unless asked.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from robustdeploy import devices
from robustdeploy.attacks import AttackSpec, FixedBudgetAttack, check_eps, make_attack
from robustdeploy.attacks.spec import takes
from robustdeploy.capability import Capability
from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.train import fit, new_classifier

INNER = ("madry", "early-stop", "trades")
REL_STEP = 2.5  # step size 2.5 * eps / steps: `steps` steps can cross the ball from any start (Madry et al.)
TRADES_BETA = 6.0  # Zhang et al. 2019, 1 / lambda in the paper's MNIST and CIFAR-10 experiments
RAMP_SHARE = 1 / 5  # `madry`'s default eps ramp: this share of the epochs (rounded down, at least one)
DEFAULT_RAMP = {"madry": RAMP_SHARE}
DEFAULT_LR_SCHEDULE = {"madry": "cosine"}


@dataclass
class Ramp:
    """The training budget batch by batch: linear from eps / batches up to eps over the first `batches` batches
    (0: eps from the first batch); the step size scales with it."""

    eps: float
    step_size: float
    batches: int
    seen: int = 0

    def next(self) -> tuple[float, float]:
        """(eps, step size) for the next batch."""
        self.seen += 1
        share = 1.0 if self.seen >= self.batches else self.seen / self.batches
        return self.eps * share, self.step_size * share


def linf_step(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """One signed-gradient ascent step, projected onto the eps-ball around x and the [0, 1] box."""
    x_adv = x_adv.detach() + alpha * grad.sign()
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def madry_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, alpha: float,
                   generator: torch.Generator) -> torch.Tensor:
    """PGD on the cross-entropy from a uniform random start, steps of `alpha`; the final iterate of every sample."""
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
    x_adv = (x + noise).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = linf_step(x_adv, x, grad, alpha, eps)
    return x_adv.detach()


def kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)), averaged over the batch (TRADES' `batchmean`)."""
    return F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(clean_logits, 1), reduction="batchmean")


def trades_examples(model: nn.Module, x: torch.Tensor, eps: float, steps: int, alpha: float,
                    generator: torch.Generator) -> torch.Tensor:
    """TRADES' inner maximisation: signed-gradient ascent on KL(f(x) || f(x')) from x + 0.001 * N(0, 1)."""
    with torch.no_grad():
        clean = model(x)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        grad, = torch.autograd.grad(kl(clean, model(x_adv)), x_adv)
        x_adv = linf_step(x_adv, x, grad, alpha, eps)
    return x_adv.detach()


def madry_loss(ramp: Ramp, steps: int, seed: int):
    """loss_fn for `train.fit`: cross-entropy on the final PGD iterate of every sample."""
    generator = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.eval()
        eps, alpha = ramp.next()
        adv = madry_examples(model, x, y, eps, steps, alpha, generator)
        model.train()
        return F.cross_entropy(model(adv), y)

    return loss


def trades_loss(ramp: Ramp, steps: int, beta: float, seed: int):
    """loss_fn for `train.fit`: CE(f(x), y) + beta * KL(f(x) || f(x')) at TRADES' inner maximiser x'."""
    generator = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.eval()
        eps, alpha = ramp.next()
        adv = trades_examples(model, x, eps, steps, alpha, generator)
        model.train()
        clean = model(x)
        return F.cross_entropy(clean, y) + beta * kl(clean, model(adv))

    return loss


def early_stop_loss(attack: FixedBudgetAttack, ramp: Ramp, seed: int):
    """loss_fn for `train.fit`: cross-entropy on `attack`'s examples (first fooling iterate; wrong samples kept)."""
    seeds = itertools.count(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fresh = replace(attack, seed=next(seeds)) if "seed" in attack.params() else attack
        model.eval()
        adv = fresh.perturb(model, x, y, ramp.next()[0]).detach()
        model.train()
        return F.cross_entropy(model(adv), y)

    return loss


def early_stop_attack(attack: str, steps: int, seed: int) -> FixedBudgetAttack:
    knobs = {"steps": steps, "early_stop": True}
    crafter = make_attack(AttackSpec(attack, {k: v for k, v in knobs.items() if k in takes(attack)}), seed)
    if not isinstance(crafter, FixedBudgetAttack) or crafter.needs < Capability.GRADIENTS:
        raise RobustDeployError(f"adversarial training needs a fixed-budget gradient attack (pgd, fgsm, apgd), "
                                f"not {attack!r}")
    return crafter


def ramp_batches(inner: str, eps_ramp: int | None, epochs: int, batches_per_epoch: int) -> tuple[int, int]:
    """(ramp epochs, ramp batches): `--eps-ramp` or the inner maximisation's default share of the epochs."""
    if eps_ramp is None:
        eps_ramp = min(epochs, max(1, int(DEFAULT_RAMP[inner] * epochs))) if inner in DEFAULT_RAMP else 0
    if not 0 <= eps_ramp <= epochs:
        raise RobustDeployError(f"--eps-ramp must be between 0 and --epochs ({epochs}), got {eps_ramp}")
    return eps_ramp, eps_ramp * batches_per_epoch


@DEFENSES.register("adv-train")
def adv_train(config, data: Dataset, eps: float | None = None, attack_steps: int = 40, inner: str = "madry",
              attack: str | None = None, beta: float | None = None, eps_ramp: int | None = None,
              attack_step_size: float | None = None, **_: object) -> Trained:
    """Train on L-inf examples of budget `eps` (pixel units) from the `inner` maximisation, `attack_steps` each,
    eps ramped up over the first `eps_ramp` epochs."""
    if eps is None:
        raise RobustDeployError("--defense adv-train needs --eps (the L-inf training budget in pixel units, "
                                "e.g. --eps 0.1)")
    check_eps(eps, "linf", 1)
    if attack_steps < 1:
        raise RobustDeployError(f"--attack-steps must be at least 1, got {attack_steps}")
    if inner not in INNER:
        raise RobustDeployError(f"unknown --inner {inner!r}; use one of {', '.join(INNER)}")
    if attack is not None and inner != "early-stop":
        raise RobustDeployError(f"--train-attack applies to --inner early-stop; --inner {inner} runs its own PGD "
                                "(drop --train-attack or use --inner early-stop)")
    if beta is not None and inner != "trades":
        raise RobustDeployError(f"--beta applies to --inner trades, not {inner} (drop --beta)")
    if beta is not None and beta < 0:
        raise RobustDeployError(f"--beta must be at least 0, got {beta:g}")
    if attack_step_size is not None and (inner == "early-stop" or not attack_step_size > 0):
        raise RobustDeployError(f"--attack-step-size must be positive and applies to --inner madry or trades, "
                                f"got {attack_step_size:g} with --inner {inner}")
    ramp_epochs, batches = ramp_batches(inner, eps_ramp, config.epochs, math.ceil(len(data.train) / config.batch_size))
    step_size = REL_STEP * eps / attack_steps if attack_step_size is None else attack_step_size
    ramp = Ramp(eps, step_size, batches)
    config = replace(config, lr_schedule=config.lr_schedule or DEFAULT_LR_SCHEDULE.get(inner, "constant"))
    info = {"eps": eps, "norm": "linf", "inner": inner, "attack_steps": attack_steps, "eps_ramp": ramp_epochs,
            "lr_schedule": config.lr_schedule}
    if inner == "madry":
        loss_fn = madry_loss(ramp, attack_steps, config.seed)
        info |= {"attack": "pgd", "step_size": step_size}
    elif inner == "trades":
        info |= {"attack": "pgd-kl", "step_size": step_size, "beta": TRADES_BETA if beta is None else beta}
        loss_fn = trades_loss(ramp, attack_steps, info["beta"], config.seed)
    else:
        crafter = early_stop_attack(attack or "pgd", attack_steps, config.seed)
        loss_fn = early_stop_loss(crafter, ramp, config.seed)
        info |= {"attack": attack or "pgd", "attack_params": crafter.params()}
    model, spec = new_classifier(config.arch, data)
    model = devices.place(model, config.device, train=True)
    losses = fit(model, data, config, loss_fn=loss_fn, desc=f"adv-train ({inner})")
    return Trained(model, spec, losses, info)
