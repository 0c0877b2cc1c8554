"""Craft adversarial examples once on the PyTorch graph, score them on every runtime, side by side.

Results are written after every budget (atomically), so an interrupted sweep keeps what it finished
and `resume=True` picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from robustdeploy.attacks import ATTACKS, FixedBudgetAttack, MinimalNormAttack, check_eps
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.data import DataConfig, Split, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.eval_blackbox import (
    BLACKBOX_FORMAT,
    BlackBoxResult,
    adversarial_key,
    evaluate_blackbox,
    rescore_blackbox,
    save_result,
)
from robustdeploy.eval_post import run_checks, write_figure
from robustdeploy.io import atomic_write_bytes, atomic_write_json, versions
from robustdeploy.realise import realise
from robustdeploy.runtimes import Capability, Runtime, create_runtime, parse_runtime

RESULT_FORMAT = "robustdeploy-evaluation/1"


@dataclass(frozen=True)
class EvalConfig:
    bundle: Path
    runtimes: tuple[str, ...] = ("torch", "ort-cpu")
    attack: str = "pgd"
    epsilons: tuple[float, ...] = (0.1,)
    attack_params: dict = field(default_factory=dict)
    limit: int | None = None
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    out: Path | None = None
    resume: bool = False
    realise: bool = True
    compare_with: Path | None = None


@dataclass(frozen=True)
class RuntimeScore:
    """One runtime's outcome for one budget; indices refer to the evaluated test samples."""

    runtime: str
    clean_accuracy: float
    robust_accuracy: float
    attack_success_rate: float
    clean_differs_from_torch: list[int]
    adversarial_differs_from_torch: list[int]
    score_seconds: float


@dataclass(frozen=True)
class BudgetResult:
    eps: float
    attack_seconds: float
    gradients: int
    scores: list[RuntimeScore]
    rounding: dict | None = None


@dataclass
class EvaluationResult:
    bundle: str
    attack: str
    attack_params: dict
    norm: str
    samples: int
    seed: int
    data: dict
    runtimes: list[dict]
    budgets: list[BudgetResult] = field(default_factory=list)
    versions: dict = field(default_factory=versions)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    complete: bool = False
    adversarial_file: str | None = None
    checks: list[dict] = field(default_factory=list)
    figure: str | None = None

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationResult:
        data = {k: v for k, v in data.items() if k != "format"}
        data["budgets"] = [
            BudgetResult(**{**b, "scores": [RuntimeScore(**s) for s in b["scores"]]}) for b in data["budgets"]
        ]
        return cls(**data)

    def score(self, eps: float, runtime: str) -> RuntimeScore:
        budget = next(b for b in self.budgets if b.eps == eps)
        return next(s for s in budget.scores if s.runtime == runtime)


def make_attack(name: str, params: dict) -> FixedBudgetAttack | MinimalNormAttack:
    attack = ATTACKS.get(name)
    if "seed" not in {f.name for f in fields(attack)}:  # deterministic attacks take no seed
        params = {k: v for k, v in params.items() if k != "seed"}
    try:
        return attack(**params)
    except TypeError as exc:
        raise RobustDeployError(f"attack {name!r} does not take that option ({exc})") from None


def open_runtimes(bundle: Bundle, names: tuple[str, ...], device: str) -> list[Runtime]:
    if not names:
        raise RobustDeployError("give at least one --runtime (e.g. --runtime torch --runtime ort-cpu)")
    labels = [parse_runtime(n).label for n in names]
    if len(set(labels)) != len(labels):
        raise RobustDeployError(f"a runtime is listed twice: {', '.join(labels)}")
    return [create_runtime(bundle, name, device=device) for name in names]


def load_test_split(bundle: Bundle, data_root: str | None, limit: int | None) -> Split:
    """The bundle's test split, checked against the bundle's input shape."""
    if limit is not None and limit < 1:
        raise RobustDeployError(f"--limit must be at least 1, got {limit}")
    config = bundle.data if data_root is None else DataConfig(**{**bundle.data.to_dict(), "data_root": data_root})
    data = load_dataset(config)
    if data.input_shape != bundle.input_shape:
        raise RobustDeployError(f"dataset {config.name!r} gives inputs of shape {data.input_shape}, the bundle "
                                f"expects {bundle.input_shape}; use the dataset the model was trained on")
    return data.test.head(limit)


def _score(runtime: Runtime, adv: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor,
           torch_clean: torch.Tensor, torch_adv: torch.Tensor, batch_size: int) -> RuntimeScore:
    start = time.perf_counter()
    adv_pred = runtime.predict(adv, batch_size)
    clean_ok = clean_pred == y
    fooled = clean_ok & (adv_pred != y)
    return RuntimeScore(
        runtime=runtime.label,
        clean_accuracy=100.0 * float(clean_ok.float().mean()),
        robust_accuracy=100.0 * float((adv_pred == y).float().mean()),
        attack_success_rate=100.0 * float(fooled.sum()) / max(1, int(clean_ok.sum())),
        clean_differs_from_torch=(clean_pred != torch_clean).nonzero().flatten().tolist(),
        adversarial_differs_from_torch=(adv_pred != torch_adv).nonzero().flatten().tolist(),
        score_seconds=round(time.perf_counter() - start, 4),
    )


def default_out(bundle: Bundle, attack: str) -> Path:
    return Path("results") / f"{bundle.name}-{attack}.json"


def evaluate(config: EvalConfig, progress=None) -> EvaluationResult:
    """Run `config.attack` at each budget on the PyTorch graph; score the examples on every runtime."""
    bundle = load_bundle(config.bundle)
    attack = make_attack(config.attack, {"seed": config.seed, **config.attack_params})
    dim = int(torch.tensor(bundle.input_shape).prod())
    for eps in config.epsilons:
        check_eps(eps, attack.norm, dim)
    if isinstance(attack, MinimalNormAttack):  # --eps only picks the curve points to print
        from robustdeploy.eval_minimal import evaluate_minimal

        return evaluate_minimal(config, attack, bundle)
    if not config.epsilons:
        raise RobustDeployError("give at least one --eps")
    if config.batch_size < 1:
        raise RobustDeployError(f"--batch-size must be at least 1, got {config.batch_size}")
    runtimes = open_runtimes(bundle, config.runtimes, config.device)
    test = load_test_split(bundle, config.data_root, config.limit)
    out = Path(config.out) if config.out else default_out(bundle, config.attack)
    adv_path = out.with_suffix(".adv.safetensors")
    if attack.needs < Capability.GRADIENTS:
        return _evaluate_blackbox(config, attack, bundle, runtimes, test, out, progress)

    result = EvaluationResult(
        bundle=str(bundle.path), attack=config.attack, attack_params=attack.params(), norm=attack.norm,
        samples=len(test), seed=config.seed, data=bundle.data.to_dict(),
        runtimes=[r.describe() for r in runtimes], adversarial_file=adv_path.name,
    )
    stored: dict[str, torch.Tensor] = {"x": test.x, "y": test.y}
    if config.resume and out.exists():
        result, stored = _resume(out, adv_path, result)

    reference = bundle.reference_model().to(config.device).requires_grad_(False)
    torch_clean = predict_labels(reference, test.x, config.batch_size, config.device)
    clean_preds = {r.label: r.predict(test.x, config.batch_size) for r in runtimes}
    done = {b.eps for b in result.budgets}
    for eps in sorted(set(config.epsilons) - done):
        torch.manual_seed(config.seed)
        start, before = time.perf_counter(), attack.stats.gradients
        smaller = [b.eps for b in result.budgets if b.eps < eps]
        previous = stored[f"eps={max(smaller):g}"] if smaller else test.x
        adv = craft(attack, reference, test, previous, eps, config.batch_size, config.device)
        seconds = time.perf_counter() - start
        rounding = None
        if config.realise:
            raw = adv
            adv, report = realise(lambda z: predict_labels(reference, z, config.batch_size, config.device), "torch",
                                  test.x, test.y, raw, eps, attack.norm)
            rounding, stored[f"eps={eps:g}/raw"] = report.to_dict(), raw
        torch_adv = predict_labels(reference, adv, config.batch_size, config.device)
        scores = [_score(r, adv, test.y, clean_preds[r.label], torch_clean, torch_adv, config.batch_size)
                  for r in runtimes]
        result.budgets.append(BudgetResult(eps, round(seconds, 4), attack.stats.gradients - before, scores,
                                           rounding))
        result.budgets.sort(key=lambda b: b.eps)
        stored[f"eps={eps:g}"] = adv
        _save(out, adv_path, result, stored)
        if progress:
            progress(eps, scores)
    result.checks = run_checks(result.to_dict(), reference, test.x.to(config.device), test.y.to(config.device),
                               [_logits(reference, test.x, config.device)], config.compare_with)
    last = result.budgets[-1].eps
    result.figure = write_figure(out.with_suffix(".png"), runtimes, test.x, test.y, stored[f"eps={last:g}"],
                                 f"{config.attack} {attack.norm} eps={last:g}, crafted on torch")
    result.complete = True
    _save(out, adv_path, result, stored)
    return result


def _logits(model: torch.nn.Module, x: torch.Tensor, device: str) -> torch.Tensor:
    with torch.no_grad():
        return model(x.to(device)).cpu()


def _evaluate_blackbox(config: EvalConfig, attack: FixedBudgetAttack, bundle: Bundle, runtimes: list[Runtime],
                       test: Split, out: Path, progress=None) -> BlackBoxResult:
    """Score- and decision-based attacks run against each runtime itself (see eval_blackbox)."""
    if config.resume:
        raise RobustDeployError(f"--resume is for white-box attacks; run {config.attack!r} again without it")
    result, stored = evaluate_blackbox(config.attack, attack, bundle, runtimes, test, config.epsilons,
                                       config.seed, config.batch_size, config.realise, out, progress)
    reference = bundle.reference_model().to(config.device).requires_grad_(False)
    result.checks = run_checks(result.to_dict(), reference, test.x.to(config.device), test.y.to(config.device),
                               [r.logits(test.x) for r in runtimes], config.compare_with)
    last = result.budgets[-1].eps
    result.figure = write_figure(out.with_suffix(".png"), runtimes, test.x, test.y,
                                 stored[adversarial_key(runtimes[0].label, last)],
                                 f"{config.attack} {attack.norm} eps={last:g}, crafted on {runtimes[0].label}")
    result.complete = True
    save_result(out, result, stored)
    return result


def predict_labels(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(x), batch_size)])


def craft(attack: FixedBudgetAttack, model: torch.nn.Module, test: Split, previous: torch.Tensor, eps: float,
           batch_size: int, device: str) -> torch.Tensor:
    """Attack in batches; a sample already fooled at a smaller budget keeps that example (it fits this one)."""
    adv = previous.clone()
    robust = predict_labels(model, previous, batch_size, device) == test.y
    index = robust.nonzero().flatten()
    for i in range(0, len(index), batch_size):
        chunk = index[i : i + batch_size]
        x, y = test.x[chunk].to(device), test.y[chunk].to(device)
        adv[chunk] = attack.perturb(model, x, y, eps).detach().cpu()
    return adv


def _save(out: Path, adv_path: Path, result: EvaluationResult, stored: dict[str, torch.Tensor]) -> None:
    """Adversarial examples first, then the JSON that points at them: a result is always re-scorable."""
    from safetensors.torch import save

    atomic_write_bytes(adv_path, save({k: v.contiguous() for k, v in stored.items()}))
    atomic_write_json(out, result.to_dict())


def _resume(out: Path, adv_path: Path, fresh: EvaluationResult) -> tuple[EvaluationResult, dict]:
    try:
        previous = EvaluationResult.from_dict(json.loads(out.read_text()))
        stored = load_file(str(adv_path))
    except Exception as exc:  # a damaged earlier result: say so rather than guess
        raise RobustDeployError(f"cannot resume from {out} ({exc}); delete it or drop --resume") from None
    same = ("bundle", "attack", "attack_params", "norm", "samples", "seed")
    if any(getattr(previous, key) != getattr(fresh, key) for key in same) or \
            [r["runtime"] for r in previous.runtimes] != [r["runtime"] for r in fresh.runtimes]:
        raise RobustDeployError(f"{out} was made with other settings; use another --out or drop --resume")
    return previous, stored


def rescore(result_path: Path, runtime: Runtime, batch_size: int = 256) -> dict[float, float]:
    """Robust accuracy per budget from the stored adversarial examples alone."""
    data = json.loads(Path(result_path).read_text())
    if data.get("format") == BLACKBOX_FORMAT:
        return rescore_blackbox(result_path, runtime, batch_size)
    result = EvaluationResult.from_dict(data)
    stored = load_file(str(Path(result_path).parent / result.adversarial_file))
    y = stored["y"]
    return {b.eps: 100.0 * float((runtime.predict(stored[f"eps={b.eps:g}"], batch_size) == y).float().mean())
            for b in result.budgets}

