"""`poison generate` (seed 000): a generator maps each training image to a perturbation |delta| <= eps that an
ensemble of frozen surrogates finds harmful, with an L2 penalty alpha * mean(delta^2) and a detector it must fool.
With the seed's choices (its GAN.ipynb; after Zhu et al. 2019's transferable clean-label poisoning):

    heads:      min  CE(C(f(x)), y) + CE(C(f(x + G(x))), y) + CE(D(f(x)), real) + CE(D(f(x + G(x))), fake)
    generator:  min  - CE(C(f(x + G(x))), y) - lam * CE(D(f(x + G(x))), fake) + alpha * mean(G(x)^2)

where f are the frozen surrogates' features, C the classification head (`--objective head`), D the fake/real head
(`--detector features-head`) and G a UNet++ (`--generator unet++`). The poisoned copy of the whole training split is
realised to 8 bits within the budget and stored as a poison set.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from robustdeploy import devices
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.figures import example_figure
from robustdeploy.io import exclusive_outputs
from robustdeploy.poison.detectors import DETECTORS
from robustdeploy.poison.generator import GENERATORS
from robustdeploy.poison.objectives import OBJECTIVES, Views
from robustdeploy.poison.store import NAMES, realise, write_poison_set
from robustdeploy.poison.surrogates import Surrogate, check_specs, staging_for, timed_prepare
from robustdeploy.progress import progress


@dataclass(frozen=True)
class GenerateConfig:
    surrogates: tuple[str, ...]
    out: Path
    data: DataConfig = DataConfig()
    alpha: float = 1000.0  # the seed's
    eps: float = 8 / 255
    objective: str = "head"
    disc_weight: float = 1.0  # the seed adds the detector term unweighted
    epochs: int = 15
    surrogate_epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    width: int = 16
    seed: int = 0
    device: str = "cpu"
    generator: str = "unet++"
    detector: str = "features-head"
    surrogate_weights: tuple[str, ...] = ()  # one .safetensors file per timm: surrogate, in order
    weight_decay: float = 1e-4  # Adam's, for the generator and the heads (the seed's)

    def recipe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("out", "data", "surrogates",
                                                                   "surrogate_weights")}


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
    GENERATORS.get(config.generator)
    DETECTORS.get(config.detector)
    if Path(config.out).exists():
        raise RobustDeployError(f"poison set {config.out} already exists; choose another --out or delete it")


def views(surrogates: list[Surrogate], clean: torch.Tensor, poisoned: torch.Tensor, y: torch.Tensor) -> Views:
    """Each surrogate's features of the batch (clean ones without a graph: nothing upstream of them trains)."""
    with torch.no_grad():
        clean_features = [s.features(clean) for s in surrogates]
    return Views(clean, poisoned, y, clean_features, [s.features(poisoned) for s in surrogates])


def _adam(module: torch.nn.Module, config: GenerateConfig) -> torch.optim.Optimizer | None:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay) if params else None


def train_generator(surrogates: list[Surrogate], x: torch.Tensor, y: torch.Tensor, config: GenerateConfig,
                    classes: int) -> tuple[torch.nn.Module, torch.nn.Module, list[dict]]:
    """Alternate the heads' step (objective and detector) and the generator's step over the training images;
    returns the generator, the trained objective and one history row per epoch."""
    torch.manual_seed(config.seed)
    with torch.no_grad():
        dims = [int(s.features(x[:2].to(config.device)).shape[1]) for s in surrogates]
    generator = devices.place(GENERATORS.create(config.generator, channels=x.shape[1], eps=config.eps,
                                                width=config.width), config.device, train=True)
    objective = devices.place(OBJECTIVES.create(config.objective, surrogates=surrogates, dims=dims, classes=classes),
                              config.device, train=True)
    detector = devices.place(DETECTORS.create(config.detector, channels=x.shape[1], dims=dims), config.device,
                             train=True)
    opt_g = _adam(generator, config)
    opt_heads = [(part, opt) for part in (objective, detector) if (opt := _adam(part, config)) is not None]
    order_rng = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch, bar in progress(config.epochs, "generator", unit="epoch", lines=config.epochs):
        generator.train()
        sums = {"surrogate": 0.0, "l2": 0.0, "disc": 0.0, "head": 0.0}
        order = torch.randperm(len(x), generator=order_rng)
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) < 2:
                continue
            clean, labels = x[idx].to(config.device), y[idx].to(config.device)
            poisoned = (clean + generator(clean)).clamp(0, 1)
            seen = views(surrogates, clean, poisoned, labels)
            fitted = {}
            for part, opt in opt_heads:
                loss = part.fit_loss(seen.detached())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                fitted["disc" if part is detector else "head"] = loss
            push = objective.push(seen)
            l2 = (poisoned - clean).pow(2).mean()
            loss = -push + config.alpha * l2 + config.disc_weight * detector.evade(seen)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            for key, value in (("surrogate", push), ("l2", l2), *fitted.items()):
                sums[key] += float(value.detach()) * len(idx)
        row = {"epoch": epoch + 1, **{k: round(v / len(x), 6) for k, v in sums.items()}}
        history.append(row)
        bar.set_postfix_str(f"objective {row['surrogate']:.4f}, mean delta^2 {row['l2']:.2e}, "
                            f"detector {row['disc']:.4f}", refresh=False)
    return generator.eval(), objective.eval(), history


@torch.no_grad()
def perturb(generator: torch.nn.Module, x: torch.Tensor, eps: float, device: str, batch_size: int = 512
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
    check_specs(config.surrogates, data, config.surrogate_weights)
    out = Path(config.out)
    staging = staging_for(out)
    try:
        surrogates, seconds = timed_prepare(config, data, staging, config.surrogate_weights)
        start = time.perf_counter()
        generator, objective, history = train_generator(surrogates, data.train.x, data.train.y, config,
                                                        len(data.classes))
        seconds["generator"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        poisoned = perturb(generator, data.train.x, config.eps, config.device)
        seconds["poison"] = round(time.perf_counter() - start, 3)
        sample = slice(0, 512)
        with torch.no_grad():
            effect = float(objective.push(views(surrogates, data.train.x[sample].to(config.device),
                                                poisoned[sample].to(config.device),
                                                data.train.y[sample].to(config.device))))
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
