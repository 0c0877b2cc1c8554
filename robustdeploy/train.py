"""The training loop and the run folder (weights in safetensors + a JSON record); defenses build on it."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from robustdeploy.data import DataConfig, Dataset, Split
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import atomic_write_json, atomic_write_tensors, discard_staging, read_document, staging_dir
from robustdeploy.models import Classifier, ModelSpec, build_classifier, load_weights
from robustdeploy.progress import Meter, progress

RUN_FORMAT = "robustdeploy-run/1"
log = logging.getLogger("robustdeploy")
# learning-rate factor at training progress t in [0, 1), applied per batch: constant; cosine annealing to 0
# (Loshchilov & Hutter, ICLR 2017, arXiv:1608.03983); step: x0.1 at half and at three quarters of training
LR_SCHEDULES = {
    "constant": lambda t: 1.0,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "step": lambda t: 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01,
}


def check_lr_schedule(name: str | None) -> None:
    if name is not None and name not in LR_SCHEDULES:
        raise RobustDeployError(f"unknown --lr-schedule {name!r}; use one of {', '.join(LR_SCHEDULES)}")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "cnn"
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str | None = None  # a name in LR_SCHEDULES; None: the defense's default (constant for most)
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    defense: str = "none"  # a name in robustdeploy.defenses.DEFENSES
    defense_params: dict = field(default_factory=dict)
    poison: str | None = None  # a poison set (robustdeploy.poison) replacing `poison_rate` of its images
    poison_rate: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """The JSON record beside a run's weights."""

    name: str
    spec: ModelSpec
    data: DataConfig
    classes: tuple[str, ...]
    train: dict
    metrics: dict
    versions: dict

    def to_dict(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "name": self.name,
            "model": self.spec.to_dict(),
            "data": self.data.to_dict(),
            "classes": list(self.classes),
            "train": self.train,
            "metrics": self.metrics,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        if data.get("format") != RUN_FORMAT:
            raise RobustDeployError(f"run.json has format {data.get('format')!r}, expected {RUN_FORMAT!r}")
        return cls(
            name=data["name"],
            spec=ModelSpec.from_dict(data["model"]),
            data=DataConfig(**data["data"]),
            classes=tuple(data["classes"]),
            train=data["train"],
            metrics=data["metrics"],
            versions=data["versions"],
        )


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """The model's labels on a split (on the CPU)."""
    model.eval()
    return torch.cat([model(split.x[i : i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(split), batch_size)] or [torch.zeros(0, dtype=torch.long)])


def accuracy(model: nn.Module, split: Split, batch_size: int = 512, device: str = "cpu") -> float:
    correct = int((predict(model, split, batch_size, device) == split.y).sum())
    return 100.0 * correct / max(1, len(split))


def fit(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    loss_fn=None,
    desc: str = "train",
) -> list[float]:
    """Adam over the training split, its learning rate following `config.lr_schedule` batch by batch;
    `loss_fn(model, x, y) -> loss` lets defenses change the objective."""
    loss_fn = loss_fn or (lambda m, x, y: nn.functional.cross_entropy(m(x), y))
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(data.train)
    factor = LR_SCHEDULES[config.lr_schedule or "constant"]
    total_steps = config.epochs * math.ceil(n / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: factor(min(step / total_steps, 1.0)))
    losses = []
    batches = -(-n // config.batch_size)
    for epoch, bar in progress(config.epochs, desc, unit="epoch", lines=config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        with Meter(batches, f"{desc}: epoch {epoch + 1}/{config.epochs}", "batch") as meter:
            for b, i in enumerate(range(0, n, config.batch_size)):
                idx = order[i : i + config.batch_size]
                if len(idx) < 2 and n > 1:
                    continue  # batch-norm needs two samples
                x, y = data.train.x[idx].to(config.device), data.train.y[idx].to(config.device)
                loss = loss_fn(model, x, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                total += float(loss.detach()) * len(idx)
                meter.update(b + 1)
        losses.append(total / n)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", val=f"{accuracy(model, data.val, device=config.device):.1f}%")
    model.eval()
    return losses


def new_classifier(arch: str, data: Dataset) -> tuple[Classifier, ModelSpec]:
    mean, std = data.channel_stats()
    spec = ModelSpec(arch=arch, input_shape=data.input_shape, num_classes=len(data.classes), mean=mean, std=std)
    return build_classifier(spec), spec


def save_run(model: nn.Module, record: RunRecord, out: Path) -> None:
    """Write weights + run.json into a temporary sibling folder, then rename it into place."""
    tmp = staging_dir(out)
    try:
        atomic_write_tensors(tmp / "model.safetensors", {k: v.detach() for k, v in model.state_dict().items()})
        atomic_write_json(tmp / "run.json", record.to_dict())
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException as exc:
        discard_staging(tmp, out, exc)
        raise


def load_run(run_dir: Path) -> tuple[Classifier, RunRecord]:
    """Rebuild a trained classifier from a run folder (safetensors: no unpickling)."""
    run_dir = Path(run_dir)
    record_path, weights = run_dir / "run.json", run_dir / "model.safetensors"
    if not record_path.is_file() or not weights.is_file():
        raise RobustDeployError(f"{run_dir} is not a run folder (needs run.json and model.safetensors); "
                                "create one with `robustdeploy train`")
    data = read_document(record_path, RUN_FORMAT, "retrain or restore it")
    try:
        record = RunRecord.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise RobustDeployError(f"{record_path} is corrupt ({exc}); retrain or restore it") from None
    return load_weights(record.spec, weights), record
