"""Black-box evaluation: a score- or decision-based attack runs against each runtime itself.

Unlike white-box attacks (crafted once on PyTorch, then transferred), Square and HopSkipJump query each
deployment directly and see only its outputs. Per runtime and budget the result holds clean and robust
accuracy, success rate and the queries used (mean and median over the attacked samples), each measured on
that runtime; the stored (8-bit rounded) adversarial examples re-score to the same numbers.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from robustdeploy.attacks import FixedBudgetAttack
from robustdeploy.bundle import Bundle
from robustdeploy.data import Split
from robustdeploy.io import atomic_write_bytes, atomic_write_json, versions
from robustdeploy.realise import realise
from robustdeploy.runtimes import Runtime

BLACKBOX_FORMAT = "robustdeploy-blackbox/1"


@dataclass(frozen=True)
class BlackBoxScore:
    """One runtime attacked directly at one budget; queries count every forward pass of the attack."""

    runtime: str
    clean_accuracy: float
    robust_accuracy: float
    attack_success_rate: float
    queries_mean: float
    queries_median: float
    queries_median_fooled: float | None
    attack_seconds: float
    rounding: dict | None = None


@dataclass(frozen=True)
class BlackBoxBudget:
    eps: float
    scores: list[BlackBoxScore]


@dataclass
class BlackBoxResult:
    bundle: str
    attack: str
    attack_params: dict
    norm: str
    samples: int
    seed: int
    data: dict
    runtimes: list[dict]
    realise: bool
    budgets: list[BlackBoxBudget] = field(default_factory=list)
    versions: dict = field(default_factory=versions)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    complete: bool = False
    adversarial_file: str | None = None
    checks: list[dict] = field(default_factory=list)
    figure: str | None = None

    def to_dict(self) -> dict:
        return {"format": BLACKBOX_FORMAT, **asdict(self)}

    def score(self, eps: float, runtime: str) -> BlackBoxScore:
        budget = next(b for b in self.budgets if b.eps == eps)
        return next(s for s in budget.scores if s.runtime == runtime)


def adversarial_key(runtime: str, eps: float) -> str:
    return f"{runtime}/eps={eps:g}"


def attack_runtime(attack: FixedBudgetAttack, runtime: Runtime, test: Split, eps: float, clean_ok: torch.Tensor,
                   batch_size: int, realise_inputs: bool) -> tuple[torch.Tensor, torch.Tensor, BlackBoxScore]:
    """Attack `runtime` through its logits only; returns (scored examples, raw examples, score)."""
    start = time.perf_counter()
    raw, queries = test.x.clone(), torch.zeros(len(test), dtype=torch.long)
    for i in range(0, len(test), batch_size):
        chunk = slice(i, i + batch_size)
        raw[chunk] = attack.perturb(runtime.logits, test.x[chunk], test.y[chunk], eps).cpu()
        queries[chunk] = attack.queries_per_sample
    seconds = time.perf_counter() - start
    adv, rounding = raw, None
    if realise_inputs:
        adv, report = realise(runtime.predict, runtime.label, test.x, test.y, raw, eps, attack.norm)
        rounding = report.to_dict()
    adv_ok = runtime.predict(adv) == test.y
    fooled = clean_ok & ~adv_ok
    attacked = queries[clean_ok].tolist() or [0]
    score = BlackBoxScore(
        runtime=runtime.label,
        clean_accuracy=100.0 * float(clean_ok.float().mean()),
        robust_accuracy=100.0 * float(adv_ok.float().mean()),
        attack_success_rate=100.0 * float(fooled.sum()) / max(1, int(clean_ok.sum())),
        queries_mean=round(statistics.fmean(attacked), 2),
        queries_median=float(statistics.median(attacked)),
        queries_median_fooled=float(statistics.median(queries[fooled].tolist())) if fooled.any() else None,
        attack_seconds=round(seconds, 4),
        rounding=rounding,
    )
    return adv, raw, score


def evaluate_blackbox(name: str, attack: FixedBudgetAttack, bundle: Bundle, runtimes: list[Runtime], test: Split,
                      epsilons: tuple[float, ...], seed: int, batch_size: int, realise_inputs: bool, out: Path,
                      progress=None) -> tuple[BlackBoxResult, dict[str, torch.Tensor]]:
    """Attack every runtime directly at every budget; writes JSON + adversarial examples after each."""
    adv_path = out.with_suffix(".adv.safetensors")
    result = BlackBoxResult(
        bundle=str(bundle.path), attack=name, attack_params=attack.params(),
        norm=attack.norm, samples=len(test), seed=seed, data=bundle.data.to_dict(),
        runtimes=[r.describe() for r in runtimes], realise=realise_inputs, adversarial_file=adv_path.name,
    )
    stored: dict[str, torch.Tensor] = {"x": test.x, "y": test.y}
    scores: dict[float, list[BlackBoxScore]] = {eps: [] for eps in sorted(set(epsilons))}
    for runtime in runtimes:
        clean_ok = runtime.predict(test.x, batch_size) == test.y
        for eps in scores:
            torch.manual_seed(seed)
            adv, raw, score = attack_runtime(attack, runtime, test, eps, clean_ok, batch_size, realise_inputs)
            scores[eps].append(score)
            stored[adversarial_key(runtime.label, eps)] = adv
            if realise_inputs:
                stored[adversarial_key(runtime.label, eps) + "/raw"] = raw
            result.budgets = [BlackBoxBudget(e, list(s)) for e, s in scores.items() if s]
            save_result(out, result, stored)
            if progress:
                progress(eps, [score])
    return result, stored


def save_result(out: Path, result: BlackBoxResult, stored: dict[str, torch.Tensor]) -> None:
    """Adversarial examples first, then the JSON that points at them: a result is always re-scorable."""
    atomic_write_bytes(out.with_suffix(".adv.safetensors"), save({k: v.contiguous() for k, v in stored.items()}))
    atomic_write_json(out, result.to_dict())


def rescore_blackbox(result_path: Path, runtime: Runtime, batch_size: int = 256) -> dict[float, float]:
    """Robust accuracy per budget of `runtime` from its stored adversarial examples alone."""
    data = json.loads(Path(result_path).read_text())
    stored = load_file(str(Path(result_path).parent / data["adversarial_file"]))
    y = stored["y"]
    return {b["eps"]: 100.0 * float((runtime.predict(stored[adversarial_key(runtime.label, b["eps"])],
                                                     batch_size) == y).float().mean())
            for b in data["budgets"]}
