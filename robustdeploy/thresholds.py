"""One set of deployment thresholds, read by export's parity and check's gate, and the uncertainty a sample count
leaves on what they compare: the Wilson (1927) score interval for a share, the Agresti & Min (2005) interval for the
paired difference of two accuracies on the same samples. A threshold inside the interval is UNRESOLVED: the sample
count cannot tell whether the deployment meets it."""

from __future__ import annotations

import math

Z95 = 1.959964  # two-sided 95 % normal quantile

# Top-1 agreement with the PyTorch graph, percent, by precision: fp16 and int8 change logits by design.
MIN_AGREEMENT = {"fp32": 99.5, "fp16": 99.0, "int8": 98.0}
MAX_ACCURACY_DROP = 0.5  # clean accuracy, points
MAX_ROBUST_DROP = 2.0  # worst-case robust accuracy per budget, points
MAX_DISAGREEMENT = 1.0  # share of samples split from the PyTorch graph within a small ball, percent


def precision_of(runtime: str) -> str:
    """The precision a runtime label names ('ort-cpu:int8' -> 'int8'; 'ort-cpu', 'torch' -> 'fp32')."""
    variant = runtime.split(":", 1)[1] if ":" in runtime else "fp32"
    return variant if variant in MIN_AGREEMENT else "fp32"


def min_agreement(runtime: str) -> float:
    return MIN_AGREEMENT[precision_of(runtime)]


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a share hits/n, in percent."""
    if n <= 0:
        return 0.0, 100.0
    p, z2 = hits / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def paired_drop(lost: float, gained: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Interval (points) of accuracy(reference) - accuracy(deployment) on the same n samples, from the samples only
    the reference gets right (`lost`) and only the deployment gets right (`gained`): Agresti & Min's adjusted Wald
    interval (half a sample added to each cell of the 2x2 table)."""
    if n <= 0:
        return -100.0, 100.0
    b, c, m = lost + 0.5, gained + 0.5, n + 2
    drop = (b - c) / m
    half = z * math.sqrt(max(0.0, (b + c) - (b - c) ** 2 / m)) / m
    return 100.0 * (drop - half), 100.0 * (drop + half)


def discordant(drop: float, differing: int, n: int) -> tuple[float, float]:
    """(lost, gained) samples behind a measured drop (points) and the number of samples whose outcome differs."""
    net = round(drop * n / 100.0)
    differing = max(differing, abs(net))
    return (differing + net) / 2, (differing - net) / 2


def resolve(low: float, high: float, limit: float, at_least: bool) -> str:
    """PASSED when the whole interval meets the limit, FAILED when none of it does, else UNRESOLVED."""
    good, bad = (low >= limit, high < limit) if at_least else (high <= limit, low > limit)
    return "PASSED" if good else "FAILED" if bad else "UNRESOLVED"


def samples_to_resolve(limit: float, at_least: bool, drop: bool = False) -> int:
    """The fewest samples at which a perfect measurement (full agreement, no drop) resolves `limit` as PASSED."""
    if drop:
        return max(1, math.ceil(100.0 * Z95 / limit - 2)) if limit > 0 else 0
    share = limit / 100.0 if at_least else 1.0 - limit / 100.0
    if share >= 1.0:
        return 0  # no count resolves a perfect requirement
    return max(1, math.ceil(share * Z95 * Z95 / (1.0 - share)))
