"""A training split with a share of its images replaced by their poisoned versions (seeded choice)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from robustdeploy.data import DataConfig, Dataset, Split
from robustdeploy.errors import RobustDeployError
from robustdeploy.poison.store import PoisonSet


def check_rate(rate: float, option: str = "--poison-rate") -> None:
    if not 0.0 <= rate <= 1.0:
        raise RobustDeployError(f"{option} must lie in [0, 1], got {rate:g}")


def poison_dataset(data: Dataset, config: DataConfig, poisons: PoisonSet, rate: float, seed: int
                   ) -> tuple[Dataset, dict]:
    """`data` whose training rows `poisons.index[chosen]` are replaced, `chosen` = round(rate * len) of the set's
    images drawn with `seed`; returns the dataset and the facts a run records."""
    check_rate(rate)
    poisons.check_fits(config, data)
    count = int(round(rate * len(poisons.index)))
    chosen = torch.randperm(len(poisons.index), generator=torch.Generator().manual_seed(seed))[:count]
    x = data.train.x.clone()
    rows = poisons.index[chosen]
    x[rows] = poisons.x[chosen]
    info = {"set": str(poisons.path), "rate": rate, "seed": seed, "replaced": count,
            "train_samples": len(data.train), "method": poisons.manifest["method"],
            "rows": sorted(int(r) for r in rows) if count <= 100 else None,
            "rows_sha256": hashlib.sha256(rows.sort().values.numpy().tobytes()).hexdigest()}
    return replace(data, train=Split(x, data.train.y)), info
