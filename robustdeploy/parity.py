"""Logit parity between the PyTorch graph and a deployment, Polygraphy-style: data first, verdict second."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.thresholds import resolve, wilson


@dataclass(frozen=True)
class ParityTolerance:
    """An element passes when |a - b| <= atol + rtol * |b| (numpy.allclose); top-1 agreement in percent.

    atol = rtol = None judges on agreement alone (fp16/int8 variants change logits by design).
    """

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    min_agreement: float = 99.5

    def __post_init__(self) -> None:
        if (self.atol is None) != (self.rtol is None):
            raise RobustDeployError("give both --atol and --rtol, or neither")
        if self.atol is not None and (self.atol < 0 or self.rtol < 0):
            raise RobustDeployError("parity tolerances --atol and --rtol must be >= 0")
        if not 0.0 <= self.min_agreement <= 100.0:
            raise RobustDeployError("--min-agreement is a percentage in [0, 100]")


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    reference: str
    samples: int
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    mismatched_elements: int
    agreement: float
    disagreeing_indices: list[int]
    tolerance: ParityTolerance
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ParityReport:
        return cls(**{**data, "tolerance": ParityTolerance(**data["tolerance"])})

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        tol = self.tolerance
        elements = "elements recorded only" if tol.atol is None else f"atol {tol.atol:g}, rtol {tol.rtol:g}"
        low, high = wilson(self.samples - len(self.disagreeing_indices), self.samples)
        unresolved = "; UNRESOLVED on this many samples" if resolve(low, high, tol.min_agreement, True) == \
            "UNRESOLVED" else ""
        return (f"{verdict} {self.runtime} vs {self.reference} on {self.samples} samples: "
                f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}, p99 abs {self.p99_abs:.3g}, "
                f"top-1 agreement {self.agreement:.2f}% (95% {low:.1f}-{high:.1f}; {elements}, min agreement "
                f"{tol.min_agreement:g}%{unresolved})")


def compare_logits(reference: torch.Tensor, target: torch.Tensor, tolerance: ParityTolerance,
                   runtime: str, reference_name: str = "torch") -> ParityReport:
    if reference.shape != target.shape:
        raise RobustDeployError(f"{runtime} returns logits of shape {tuple(target.shape)}, "
                                f"PyTorch {tuple(reference.shape)}; the export is broken")
    diff = (reference - target).abs().double()
    rel = diff / reference.abs().double().clamp_min(1e-12)
    flat = diff.flatten()
    mismatched = 0 if tolerance.atol is None else \
        int((diff > tolerance.atol + tolerance.rtol * reference.abs().double()).sum())
    disagree = (reference.argmax(1) != target.argmax(1)).nonzero().flatten().tolist()
    agreement = 100.0 * (1 - len(disagree) / max(1, len(reference)))
    passed = mismatched == 0 and agreement >= tolerance.min_agreement and bool(torch.isfinite(target).all())
    return ParityReport(
        runtime=runtime,
        reference=reference_name,
        samples=len(reference),
        max_abs=float(flat.max()) if flat.numel() else 0.0,
        mean_abs=float(flat.mean()) if flat.numel() else 0.0,
        median_abs=float(flat.median()) if flat.numel() else 0.0,
        p99_abs=float(torch.quantile(flat, 0.99)) if flat.numel() else 0.0,
        max_rel=float(rel.max()) if rel.numel() else 0.0,
        mismatched_elements=mismatched,
        agreement=agreement,
        disagreeing_indices=disagree,
        tolerance=tolerance,
        passed=passed,
    )
