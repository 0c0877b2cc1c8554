"""`poison craft`: a targeted clean-label attack (Convex Polytope or Feature Collision) against one test image.

Bases are the `poisons` training images of the poison class nearest the target in the first surrogate's feature
space; the crafted poisons keep their clean labels, are realised to 8 bits in the eps-ball of their bases, and are
stored as a poison set whose manifest names the target.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.data import DataConfig, Dataset, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.figures import example_figure
from robustdeploy.io import exclusive_outputs
from robustdeploy.models.parts import penultimate
from robustdeploy.poison import convex_polytope as _cp  # noqa: F401  (registers convex-polytope)
from robustdeploy.poison import feature_collision as _fc  # noqa: F401  (registers feature-collision)
from robustdeploy.poison.methods import TARGETED
from robustdeploy.poison.store import NAMES, realise, write_poison_set
from robustdeploy.poison.surrogates import check_specs, staging_for, timed_prepare


@dataclass(frozen=True)
class CraftConfig:
    method: str
    surrogates: tuple[str, ...]
    target_index: int
    poison_class: int
    out: Path
    data: DataConfig = DataConfig()
    poisons: int = 5
    eps: float = 0.1
    iterations: int | None = None  # the method's default (convex-polytope: 4000, feature-collision: 1000)
    params: dict = field(default_factory=dict)
    surrogate_epochs: int = 10
    seed: int = 0
    device: str = "cpu"


def validate(config: CraftConfig, data: Dataset) -> None:
    TARGETED.get(config.method)
    if not 0.0 < config.eps <= 1.0:
        raise RobustDeployError(f"--eps must lie in (0, 1] (pixel units), got {config.eps:g}")
    if config.iterations is not None and config.iterations < 1:
        raise RobustDeployError(f"--iterations must be at least 1, got {config.iterations}")
    if not 0 <= config.target_index < len(data.test):
        raise RobustDeployError(f"--target-index {config.target_index} is outside the test split "
                                f"(0..{len(data.test) - 1})")
    if not 0 <= config.poison_class < len(data.classes):
        raise RobustDeployError(f"--poison-class {config.poison_class} is not a class (0..{len(data.classes) - 1})")
    if int(data.test.y[config.target_index]) == config.poison_class:
        raise RobustDeployError(f"test image {config.target_index} already belongs to class {config.poison_class}; "
                                "choose another --target-index or --poison-class")
    available = int((data.train.y == config.poison_class).sum())
    if not 1 <= config.poisons <= available:
        raise RobustDeployError(f"--poisons must lie in 1..{available} (training images of class "
                                f"{config.poison_class}), got {config.poisons}")
    if Path(config.out).exists():
        raise RobustDeployError(f"poison set {config.out} already exists; choose another --out or delete it")


@torch.no_grad()
def nearest_bases(model, data: Dataset, target: torch.Tensor, poison_class: int, count: int) -> torch.Tensor:
    """Rows of the training split of `poison_class` whose features are nearest the target's."""
    rows = (data.train.y == poison_class).nonzero().flatten()
    distance = (penultimate(model, data.train.x[rows]) - penultimate(model, target)).norm(dim=1)
    return rows[distance.argsort()[:count]]


@exclusive_outputs
def craft(config: CraftConfig) -> Path:
    """Train (or load) the surrogates, craft the poisons, write them as a poison set."""
    data = load_dataset(config.data)
    validate(config, data)
    check_specs(config.surrogates, data)
    out = Path(config.out)
    staging = staging_for(out)
    try:
        surrogates, seconds = timed_prepare(config, data, staging)
        models = [s.model for s in surrogates]
        target = data.test.x[config.target_index : config.target_index + 1].to(config.device)
        rows = nearest_bases(models[0].cpu(), data, target.cpu(), config.poison_class, config.poisons)
        models[0].to(config.device)
        bases = data.train.x[rows].to(config.device)
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        crafted = TARGETED.create(config.method, surrogates=models, target=target, bases=bases, eps=config.eps,
                                  iterations=config.iterations, **config.params)
        seconds["craft"] = round(time.perf_counter() - start, 3)
        poisons = realise(bases.cpu(), crafted.poisons.cpu(), config.eps).float().div_(255.0)
        target_facts = {"split": "test", "index": config.target_index,
                        "label": int(data.test.y[config.target_index]), "poison_class": config.poison_class}
        manifest = {"method": config.method, "recipe": {k: v for k, v in asdict(config).items()
                                                        if k not in ("out", "data", "surrogates")},
                    "eps": config.eps, "alpha": None, "surrogates": [s.describe(staging) for s in surrogates],
                    "data": config.data.to_dict(), "target": target_facts, "history": crafted.history,
                    "info": crafted.info, "linf": float((poisons - bases.cpu()).abs().max()), "seconds": seconds,
                    "figure": "grid.png"}
        title = f"{config.method}: target {config.target_index} -> class {config.poison_class}"
        grid = {"grid.png": lambda path: example_figure(path, bases.cpu(), poisons, data.train.y[rows], {}, title,
                                                        NAMES)}
        write_poison_set(out, manifest, poisons, rows, data, grid, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
