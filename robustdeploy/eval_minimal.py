"""Minimal-norm evaluation: smallest adversarials on the PyTorch graph, re-checked on every deployment.

Per sample the norm found (0 where the clean input is already wrong, inf where the attack found none)
gives the accuracy-versus-budget curve for free. Examples found on PyTorch sit on its decision boundary,
so each runtime may stop being fooled by some (or be fooled by others): both are counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save

from robustdeploy.attacks import MinimalNormAttack, lp_norm
from robustdeploy.io import atomic_write_bytes, atomic_write_json, versions
from robustdeploy.report import table

RESULT_FORMAT = "robustdeploy-minimal/1"


if TYPE_CHECKING:
    from robustdeploy.bundle import Bundle


@dataclass(frozen=True)
class MinimalRuntimeCheck:
    """How a runtime treats the minimal adversarials found on PyTorch."""

    runtime: str
    clean_accuracy: float
    fooled: int
    stopped_fooling: int
    started_fooling: int
    clean_misclassified: int


@dataclass
class MinimalResult:
    bundle: str
    attack: str
    attack_params: dict
    norm: str
    samples: int
    seed: int
    norms: list[float]
    median_norm: float
    mean_norm: float
    curve: dict[str, float]
    checks: list[MinimalRuntimeCheck]
    attack_seconds: float
    adversarial_file: str
    versions: dict = field(default_factory=versions)
    finished: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, **asdict(self)}


def accuracy_curve(norms: torch.Tensor, epsilons: tuple[float, ...]) -> dict[str, float]:
    """Robust accuracy (%) at each budget: samples whose smallest adversarial is larger than it."""
    return {f"{eps:g}": 100.0 * float((norms > eps).float().mean()) for eps in epsilons}


def default_grid(norms: torch.Tensor) -> tuple[float, ...]:
    finite = norms[torch.isfinite(norms)]
    top = float(finite.max()) if len(finite) else 1.0
    return tuple(round(top * i / 8, 3) for i in range(9))


def evaluate_minimal(config, attack: MinimalNormAttack, bundle: Bundle) -> MinimalResult:
    """Run `attack` on the (already verified) bundle's PyTorch graph over the test split, then check each runtime."""
    import time

    from robustdeploy.evaluate import default_out, load_test_split, open_runtimes, predict_labels

    runtimes = open_runtimes(bundle, config.runtimes, config.device)
    test = load_test_split(bundle, config.data_root, config.limit)
    out = Path(config.out) if config.out else default_out(bundle, config.attack)
    adv_path = out.with_suffix(".adv.safetensors")
    model = bundle.reference_model().to(config.device).requires_grad_(False)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    adv = torch.cat([attack.minimize(model, test.x[i : i + config.batch_size].to(config.device),
                                     test.y[i : i + config.batch_size].to(config.device)).detach().cpu()
                     for i in range(0, len(test), config.batch_size)])
    seconds = time.perf_counter() - start
    clean_ok = predict_labels(model, test.x, config.batch_size, config.device) == test.y
    torch_fooled = clean_ok & (predict_labels(model, adv, config.batch_size, config.device) != test.y)
    norms = torch.where(torch_fooled, lp_norm(adv - test.x, attack.norm), torch.tensor(float("inf")))
    norms = torch.where(clean_ok, norms, torch.tensor(0.0))
    checks = [_check(r, test.x, adv, test.y, torch_fooled, config.batch_size) for r in runtimes]
    found = norms[torch_fooled]
    result = MinimalResult(
        bundle=str(bundle.path), attack=config.attack, attack_params=attack.params(), norm=attack.norm,
        samples=len(test), seed=config.seed, norms=norms.tolist(), median_norm=float(norms[clean_ok].median())
        if clean_ok.any() else 0.0, mean_norm=float(found.mean()) if len(found) else float("inf"),
        curve=accuracy_curve(norms, tuple(config.epsilons) or default_grid(norms)), checks=checks,
        attack_seconds=round(seconds, 4), adversarial_file=adv_path.name,
    )
    atomic_write_bytes(adv_path, save({"x": test.x.contiguous(), "y": test.y, "adv": adv.contiguous()}))
    atomic_write_json(out, result.to_dict())
    return result


def _check(runtime, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, torch_fooled: torch.Tensor,
           batch_size: int) -> MinimalRuntimeCheck:
    clean = runtime.predict(x, batch_size) == y
    adv_wrong = runtime.predict(adv, batch_size) != y
    return MinimalRuntimeCheck(
        runtime=runtime.label, clean_accuracy=100.0 * float(clean.float().mean()),
        fooled=int((torch_fooled & adv_wrong).sum()), stopped_fooling=int((torch_fooled & ~adv_wrong).sum()),
        started_fooling=int((~torch_fooled & adv_wrong & clean).sum()), clean_misclassified=int((~clean).sum()),
    )


def minimal_table(result: MinimalResult) -> str:
    """Curve points, then one row per runtime."""
    curve = table(["eps", "robust % (torch)"], [[k, v] for k, v in result.curve.items()])
    rows = [[c.runtime, c.clean_accuracy, c.fooled, c.stopped_fooling, c.started_fooling, c.clean_misclassified]
            for c in result.checks]
    checks = table(["runtime", "clean %", "fooled", "stopped fooling", "started fooling", "clean wrong"], rows)
    return f"{result.attack} ({result.norm}): median norm {result.median_norm:.4g}, mean norm " \
           f"{result.mean_norm:.4g} over {result.samples} samples\n{curve}\n{checks}"
