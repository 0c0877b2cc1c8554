"""`poison generate` (seed 000): a U-Net generator maps each training image to a perturbation |delta| <= eps that
pushes an ensemble of surrogates' features (or predictions) of x + delta away from those of x, with an L2 penalty
alpha * ||delta||^2 and a discriminator term that keeps poisoned images hard to tell from clean ones:

    min_G  - mean_s d_s(x, x + G(x))  +  alpha * mean(G(x)^2)  +  lam * BCE(D(x + G(x)), clean)

(the seed's GAN.ipynb; after Zhu et al. 2019's transferable clean-label poisoning). The poisoned copy of the whole
training split is realised to 8 bits within the budget and stored as a poison set.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from robustdeploy import devices
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.figures import example_figure
from robustdeploy.io import exclusive_outputs
from robustdeploy.poison.generator import Discriminator, UNetGenerator
from robustdeploy.poison.objectives import OBJECTIVES
from robustdeploy.poison.store import NAMES, realise, write_poison_set
from robustdeploy.poison.surrogates import Surrogate, check_specs, staging_for, timed_prepare
from robustdeploy.progress import progress


@dataclass(frozen=True)
class GenerateConfig:
    surrogates: tuple[str, ...]
    out: Path
    data: DataConfig = DataConfig()
    alpha: float = 100.0
    eps: float = 8 / 255
    objective: str = "features"
    disc_weight: float = 0.1
    epochs: int = 20
    surrogate_epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 16
    seed: int = 0
    device: str = "cpu"

    def recipe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("out", "data", "surrogates")}


def validate(config: GenerateConfig) -> None:
    if not 0.0 < config.eps <= 1.0:
        raise RobustDeployError(f"--eps must lie in (0, 1] (pixel units), got {config.eps:g}")
    if config.alpha < 0 or config.disc_weight < 0:
        raise RobustDeployError("--alpha and --disc-weight must be >= 0")
    if config.epochs < 1 or config.surrogate_epochs < 1 or config.batch_size < 2 or config.lr <= 0 or \
            config.width < 1:
        raise RobustDeployError("--epochs, --surrogate-epochs and --width must be >= 1, --batch-size >= 2, "
                                "--lr > 0")
    OBJECTIVES.get(config.objective)
    if Path(config.out).exists():
        raise RobustDeployError(f"poison set {config.out} already exists; choose another --out or delete it")


def surrogate_objective(surrogates: list[Surrogate], objective: str, clean: torch.Tensor, poisoned: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
    """The ensemble's distance between clean and poisoned (to be maximised), averaged over surrogates."""
    fn = OBJECTIVES.get(objective)
    return torch.stack([fn(s.model, clean, poisoned, y) for s in surrogates]).mean()


def train_generator(surrogates: list[Surrogate], x: torch.Tensor, y: torch.Tensor, config: GenerateConfig
                    ) -> tuple[UNetGenerator, list[dict]]:
    """Alternate discriminator and generator steps over the training images; one history row per epoch."""
    torch.manual_seed(config.seed)
    generator = devices.place(UNetGenerator(x.shape[1], config.eps, config.width), config.device, train=True)
    critic = devices.place(Discriminator(x.shape[1]), config.device, train=True)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr)
    order_rng = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch, bar in progress(config.epochs, "generator", unit="epoch", lines=config.epochs):
        generator.train()
        sums = {"surrogate": 0.0, "l2": 0.0, "disc": 0.0}
        order = torch.randperm(len(x), generator=order_rng)
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) < 2:
                continue
            clean, labels = x[idx].to(config.device), y[idx].to(config.device)
            poisoned = (clean + generator(clean)).clamp(0, 1)
            real, fake = critic(clean), critic(poisoned.detach())
            d_loss = F.binary_cross_entropy_with_logits(real, torch.zeros_like(real)) + \
                F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            push = surrogate_objective(surrogates, config.objective, clean, poisoned, labels)
            l2 = (poisoned - clean).pow(2).mean()
            seen = critic(poisoned)
            fool = F.binary_cross_entropy_with_logits(seen, torch.zeros_like(seen))
            loss = -push + config.alpha * l2 + config.disc_weight * fool
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            for key, value in (("surrogate", push), ("l2", l2), ("disc", d_loss)):
                sums[key] += float(value.detach()) * len(idx)
        row = {"epoch": epoch + 1, **{k: round(v / len(x), 6) for k, v in sums.items()}}
        history.append(row)
        bar.set_postfix_str(f"surrogate distance {row['surrogate']:.4f}, mean delta^2 {row['l2']:.2e}, "
                            f"discriminator {row['disc']:.4f}", refresh=False)
    return generator.eval(), history


@torch.no_grad()
def perturb(generator: UNetGenerator, x: torch.Tensor, eps: float, device: str, batch_size: int = 512
            ) -> torch.Tensor:
    """The poisoned images on the 8-bit grid within eps of `x` (float in [0, 1])."""
    out = [realise(chunk, (chunk + generator(chunk.to(device)).cpu()).clamp(0, 1), eps)
           for chunk in x.split(batch_size)]
    return torch.cat(out).float().div_(255.0)


@exclusive_outputs
def generate(config: GenerateConfig) -> Path:
    """Train (or load) the surrogates, train the generator, write the poisoned training split as a poison set
    (the surrogates trained here go into its `surrogates/` folder)."""
    validate(config)
    data = load_dataset(config.data)
    check_specs(config.surrogates, data)
    out = Path(config.out)
    staging = staging_for(out)
    try:
        surrogates, seconds = timed_prepare(config, data, staging)
        start = time.perf_counter()
        generator, history = train_generator(surrogates, data.train.x, data.train.y, config)
        seconds["generator"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        poisoned = perturb(generator, data.train.x, config.eps, config.device)
        seconds["poison"] = round(time.perf_counter() - start, 3)
        sample = slice(0, 512)
        with torch.no_grad():
            effect = float(surrogate_objective(
                surrogates, config.objective, data.train.x[sample].to(config.device),
                poisoned[sample].to(config.device), data.train.y[sample].to(config.device)))
        manifest = {"method": "generator", "recipe": config.recipe(), "alpha": config.alpha, "eps": config.eps,
                    "surrogates": [s.describe(staging) for s in surrogates], "data": config.data.to_dict(),
                    "target": None, "history": history, "surrogate_objective_stored": round(effect, 6),
                    "linf": float((poisoned - data.train.x).abs().max()), "seconds": seconds, "figure": "grid.png"}
        title = f"{config.data.name}: alpha {config.alpha:g}, eps {config.eps:.3g}"
        grid = {"grid.png": lambda path: example_figure(path, data.train.x[:8], poisoned[:8], data.train.y[:8], {},
                                                        title, NAMES)}
        write_poison_set(out, manifest, poisoned, torch.arange(len(data.train)), data, grid, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
