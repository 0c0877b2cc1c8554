"""Surrogate classifiers for crafting poisons: trained here with the ordinary training recipe, or imported from a
run folder (`--surrogate runs/NAME`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robustdeploy import devices
from robustdeploy.data import DataConfig, Dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import check_output_dir
from robustdeploy.models import MODELS, create_net
from robustdeploy.recipe import train
from robustdeploy.train import TrainConfig, load_run


@dataclass(frozen=True)
class Surrogate:
    name: str  # the architecture (or the run it came from)
    arch: str
    model: nn.Module
    test_accuracy: float
    run: str

    def describe(self, staging: Path) -> dict:
        """As recorded in a poison set: a run trained in `staging` is named by its place in the set."""
        run = Path(self.run)
        where = f"surrogates/{run.name}" if run.parent == staging else str(run)
        return {"name": self.name, "arch": self.arch, "test_accuracy": self.test_accuracy, "run": where}


def check_arch(arch: str, data: Dataset) -> None:
    """Refuse an unknown architecture (a registry name or `timm:<name>`) in one line."""
    if arch.startswith("timm:"):
        create_net(arch, data.input_shape, len(data.classes))
    else:
        MODELS.get(arch)


def check_specs(specs: tuple[str, ...], data: Dataset) -> None:
    """Refuse unknown architectures and missing runs before anything is trained."""
    if not specs:
        raise RobustDeployError("give at least one --surrogate ARCH (e.g. --surrogate cnn --surrogate mlp)")
    for spec in specs:
        if not Path(spec).is_dir():
            check_arch(spec, data)


def prepare(specs: tuple[str, ...], data_config: DataConfig, data: Dataset, folder: Path, epochs: int,
            seed: int, device: str) -> list[Surrogate]:
    """Each spec as a trained, frozen classifier: a run folder is loaded, an architecture is trained into
    `folder/<arch>` with the standard recipe on the clean training split."""
    found = []
    for i, spec in enumerate(specs):
        if Path(spec).is_dir():
            model, record = load_run(Path(spec))
            if record.spec.input_shape != data.input_shape or record.data.name != data_config.name:
                raise RobustDeployError(f"surrogate run {spec} was trained on {record.data.name} "
                                        f"{record.spec.input_shape}, not {data_config.name} {data.input_shape}")
            run = spec
        else:
            run = str(folder / f"{i}-{spec.replace(':', '-')}")
            record = train(TrainConfig(arch=spec, data=data_config, epochs=epochs, seed=seed, device=device),
                           Path(run))
            model, _ = load_run(Path(run))
        model = devices.place(model, device)
        found.append(Surrogate(spec, record.spec.arch, model, record.metrics["test_accuracy"], run))
    return found


def staging_for(out: Path) -> Path:
    """Hold the poison set `out` before any work (refused if it exists or another run writes it); the folder
    the surrogates trained for it are built in."""
    check_output_dir(out, "--out", False, "choose another --out or delete it")
    return out.parent / f".{out.name}.surrogates"


def timed_prepare(config, data: Dataset, staging: Path) -> tuple[list[Surrogate], dict[str, float]]:
    """`prepare` for a generate or craft config, with the seconds it took."""
    start = time.perf_counter()
    found = prepare(config.surrogates, config.data, data, staging, config.surrogate_epochs, config.seed,
                    config.device)
    return found, {"surrogates": round(time.perf_counter() - start, 3)}
