"""A training run: standard training or a registered defense's recipe, then the run folder it writes."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from robustdeploy.collapse import diagnose
from robustdeploy.data import load_dataset
from robustdeploy.defenses import DEFENSES
from robustdeploy.errors import RobustDeployError
from robustdeploy.io import check_output_dir, exclusive_outputs, versions
from robustdeploy.models.base import check_input_size
from robustdeploy.poison.mix import check_rate, poison_dataset
from robustdeploy.poison.store import load_poison_set
from robustdeploy.train import RunRecord, TrainConfig, accuracy, check_lr_schedule, predict, save_run

# what to try when a defense's training collapses (issue 21); the key is the defense, then its inner maximisation
COLLAPSE_FIX = {
    "adv-train": "ramp the budget up (--eps-ramp EPOCHS), lower --lr (e.g. 1e-4) or use --inner trades",
    "distillation": "lower --temperature or train more --epochs",
}


def _validate(config: TrainConfig) -> None:
    if config.epochs < 1:
        raise RobustDeployError(f"--epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise RobustDeployError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.lr <= 0:
        raise RobustDeployError(f"--lr must be positive, got {config.lr}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise RobustDeployError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    DEFENSES.get(config.defense)
    check_lr_schedule(config.lr_schedule)
    check_rate(config.poison_rate)


@exclusive_outputs
def train(config: TrainConfig, out: Path) -> RunRecord:
    """Train `config.arch` on `config.data` and write a run folder at `out` (atomically)."""
    _validate(config)
    out = Path(out)
    torch.manual_seed(config.seed)
    data = load_dataset(config.data)
    check_input_size(config.arch, data.input_shape, len(data.classes))
    poisoning = {}
    if config.poison is not None:
        data, facts = poison_dataset(data, config.data, load_poison_set(Path(config.poison)), config.poison_rate,
                                     config.seed)
        poisoning = {"poison": facts}
    check_output_dir(out, "--out", False, "choose another --out or delete it")
    start = time.perf_counter()
    trained = DEFENSES.create(config.defense, config=config, data=data, **config.defense_params)
    model, spec, losses, defense_info = trained.model, trained.spec, trained.losses, trained.info
    refuse_collapse(model, data, losses, config)
    metrics = {
        "train_loss": losses,
        "train_seconds": round(time.perf_counter() - start, 3),
        "val_accuracy": accuracy(model, data.val, device=config.device),
        "test_accuracy": accuracy(model, data.test, device=config.device),
    } | poisoning | ({"defense": {"name": config.defense, **defense_info}} if config.defense != "none" else {})
    record = RunRecord(out.name, spec, config.data, data.classes, config.to_dict(), metrics, versions())
    save_run(model.cpu(), record, out)
    return record


def refuse_collapse(model: torch.nn.Module, data, losses: list[float], config: TrainConfig) -> None:
    """Refuse a model that predicts (nearly) one class: no run folder for a model no evaluation can trust."""
    cause = diagnose(predict(model, data.val, device=config.device), data.val.y, len(data.classes), losses,
                     data.classes)
    if cause is not None:
        fix = COLLAPSE_FIX.get(config.defense, "lower --lr, train more --epochs, or check the data and labels")
        raise RobustDeployError(f"training collapsed to a near-constant classifier ({cause}); no run was written: "
                                f"{fix}")
