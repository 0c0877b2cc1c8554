"""Surrogates for crafting poisons: classifiers trained here with the ordinary training recipe or imported from a
run folder (`--surrogate runs/NAME`), and pretrained feature extractors (`--surrogate timm:NAME --surrogate-weights
FILE`, seed 000's frozen backbones). All are frozen."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustdeploy import devices
from robustdeploy.data import DataConfig, Dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import check_output_dir
from robustdeploy.models.base import check_input_size
from robustdeploy.models.parts import penultimate
from robustdeploy.poison.backbones import FrozenBackbone, load_backbone
from robustdeploy.recipe import train
from robustdeploy.train import TrainConfig, load_run


@dataclass(frozen=True)
class Surrogate:
    name: str  # the architecture (or the run it came from)
    arch: str
    model: nn.Module  # a Classifier, or a FrozenBackbone (features only)
    test_accuracy: float | None
    run: str | None
    pretrained: dict | None = None  # weights file, its sha256, preprocessing, feature size

    @property
    def is_backbone(self) -> bool:
        return isinstance(self.model, FrozenBackbone)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, D) of pixels `x` in [0, 1]: a backbone's output, a classifier's penultimate layer."""
        return self.model(x) if self.is_backbone else penultimate(self.model, x)

    def describe(self, staging: Path) -> dict:
        """As recorded in a poison set: a run trained in `staging` is named by its place in the set."""
        if self.run is None:
            return {"name": self.name, "arch": self.arch, "test_accuracy": None, "run": None, **self.pretrained}
        run = Path(self.run)
        where = f"surrogates/{run.name}" if run.parent == staging else str(run)
        return {"name": self.name, "arch": self.arch, "test_accuracy": self.test_accuracy, "run": where}


def check_arch(arch: str, data: Dataset) -> None:
    """Refuse an unknown architecture (a registry name or `timm:<name>`), or one that cannot take the data's
    images, in one line."""
    check_input_size(arch, data.input_shape, len(data.classes))  # building it refuses an unknown name


def pair_weights(specs: tuple[str, ...], weights: tuple[str, ...]) -> dict[int, Path]:
    """Spec position -> weights file: the i-th --surrogate-weights goes with the i-th `timm:` surrogate."""
    timm_at = [i for i, spec in enumerate(specs) if spec.startswith("timm:") and not Path(spec).is_dir()]
    if weights and len(weights) != len(timm_at):
        raise RobustDeployError(f"{len(weights)} --surrogate-weights for {len(timm_at)} timm: surrogates; give one "
                                "file per timm:NAME surrogate, in the same order")
    return {i: Path(w) for i, w in zip(timm_at, weights)}


def check_specs(specs: tuple[str, ...], data: Dataset, weights: tuple[str, ...] = ()) -> None:
    """Refuse unknown architectures, missing runs and unpaired weights before anything is trained."""
    if not specs:
        raise RobustDeployError("give at least one --surrogate ARCH (e.g. --surrogate cnn --surrogate mlp)")
    paired = pair_weights(specs, weights)
    for i, spec in enumerate(specs):
        if i in paired and not paired[i].is_file():
            raise RobustDeployError(f"--surrogate-weights {paired[i]} does not exist; point it at a .safetensors "
                                    "file")
        if not Path(spec).is_dir():
            check_arch(spec, data)


def prepare(specs: tuple[str, ...], data_config: DataConfig, data: Dataset, folder: Path, epochs: int,
            seed: int, device: str, weights: tuple[str, ...] = ()) -> list[Surrogate]:
    """Each spec as a frozen surrogate: a `timm:` spec with weights is a pretrained backbone, a run folder is
    loaded, an architecture is trained into `folder/<arch>` with the standard recipe on the clean training split."""
    paired = pair_weights(specs, weights)
    found = []
    for i, spec in enumerate(specs):
        if i in paired:
            backbone, made = load_backbone(spec, paired[i])
            found.append(Surrogate(spec, spec, devices.place(backbone, device), None, None, made))
            continue
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


def timed_prepare(config, data: Dataset, staging: Path, weights: tuple[str, ...] = ()
                  ) -> tuple[list[Surrogate], dict[str, float]]:
    """`prepare` for a generate or craft config (and its pretrained weights), with the seconds it took."""
    start = time.perf_counter()
    found = prepare(config.surrogates, config.data, data, staging, config.surrogate_epochs, config.seed,
                    config.device, weights)
    return found, {"surrogates": round(time.perf_counter() - start, 3)}
