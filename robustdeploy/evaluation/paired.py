"""A paired comparison of two models' per-sample outcomes on the same samples: the difference in accuracy with a
paired bootstrap percentile interval (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13) and
the discordant counts an exact McNemar test reads (McNemar 1947)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """Accuracy points of `a` minus `b` on the same n samples, its interval, and the samples only one keeps."""

    n: int
    difference: float
    low: float
    high: float
    only_a: int
    only_b: int
    level: float = LEVEL

    def interval(self) -> str:
        return f"{self.level:.0%} CI [{self.low:+.1f}, {self.high:+.1f}], n={self.n} paired samples"


def paired_difference(a: torch.Tensor, b: torch.Tensor, seed: int = 0, resamples: int = RESAMPLES,
                      level: float = LEVEL) -> Paired:
    """Bootstrap the mean of a_i - b_i over samples drawn with replacement (the pairs stay together)."""
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same samples, got {tuple(a.shape)} and {tuple(b.shape)}")
    d = a.flatten().float() - b.flatten().float()
    n = len(d)
    if n == 0:
        return Paired(0, 0.0, 0.0, 0.0, 0, 0, level)
    generator = torch.Generator().manual_seed(seed)
    means = torch.cat([d[torch.randint(n, (chunk, n), generator=generator)].mean(1)
                       for chunk in [1000] * (resamples // 1000) + [resamples % 1000] if chunk])
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail])).tolist()
    return Paired(n, round(100.0 * float(d.mean()), 4), round(100.0 * low, 4), round(100.0 * high, 4),
                  int((d > 0).sum()), int((d < 0).sum()), level)
