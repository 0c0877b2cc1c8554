"""The binarization test of Zimmermann et al., "Increasing confidence in adversarial robustness evaluations"
(NeurIPS 2022): per sample, the bundle's features with a new linear readout trained to separate the sample and
points inside eta*eps (class 0) from points on the eps-sphere (class 1), all on the 8-bit grid. Where the readout
separates them, an adversarial example within the budget is known to exist, so the configured cascade must find it.
Paired with AttackBench's optimality (Cinà et al. 2024): per sample the smallest perturbation any attack found,
and each attack's distance to it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from robustdeploy.attacks import AttackSpec, lp_norm, predict
from robustdeploy.data import Samples
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.craft import Plan, build, craft, set_key
from robustdeploy.evaluation.grid import grid_budget, realise
from robustdeploy.evaluation.session import Session, SessionConfig, open_session
from robustdeploy.io import atomic_write_json, check_output
from robustdeploy.runtimes import RuntimeSpec
from robustdeploy.runtimes.torch import TorchRuntime

SOURCE = "binarized"


@dataclass(frozen=True)
class BinarizationConfig(SessionConfig):
    attacks: tuple[AttackSpec, ...] = (AttackSpec("fgsm"), AttackSpec("pgd", {"steps": 10}))
    eps: float = 0.1
    inner: int = 49  # random points inside eta*eps (the sample itself is the 50th inner point), class 0
    boundary: int = 50  # points on the eps-sphere, class 1
    eta: float = 0.95  # inner radius as a share of eps (the paper's default)
    min_success: float = 95.0  # percent of the valid samples the cascade must fool (the guarantee is 100%)
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.inner < 1 or self.boundary < 1:
            raise RobustDeployError("--inner and --boundary points must be at least 1")
        if not 0 < self.eta < 1:
            raise RobustDeployError(f"eta must lie in (0, 1), got {self.eta:g}")
        if not 0 <= self.min_success <= 100:
            raise RobustDeployError("--min-binarization-success is a percentage in [0, 100]")


@dataclass
class BinarizationReport:
    """Per attack: success on the valid binarised samples and AttackBench's optimality; the verdict."""

    eps: float
    norm: str
    samples: int
    valid: int  # samples whose readout separates inner from boundary points: an adversarial surely exists
    success: float  # percent of valid samples the cascade fooled (any attack)
    min_success: float
    passed: bool
    attacks: dict[str, dict] = field(default_factory=dict)  # label -> success, mean distance to best, optimality
    best_norm: list[float | None] = field(default_factory=list)  # per valid sample, smallest norm any attack found

    def line(self) -> str:
        return (f"{'PASSED' if self.passed else 'FAILED'} binarization test eps={self.eps:g}: the cascade fooled "
                f"{self.success:.1f}% of {self.valid} binarised samples with a guaranteed adversarial example "
                f"(min {self.min_success:g}%; {self.samples - self.valid} of {self.samples} not separable, skipped)")


class Binarized(nn.Module):
    """The model's features (the input of its last linear layer) read out by one linear unit: logits (0, score),
    then two padding logits below both, so that the DLR losses' third and fourth largest logits exist (Croce &
    Hein 2020); the argmax is always class 0 (inner) or 1 (boundary)."""

    def __init__(self, model: nn.Module, readout: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.model, self.readout = model, readout
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = features(self.model, self.readout, x) @ self.weight + self.bias
        low = score.clamp(max=0) - 1
        return torch.stack([torch.zeros_like(score), score, low, low - 1], 1)


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise RobustDeployError("the binarization test reads the input of the model's last linear layer, and this "
                                "model has none; run it on a bundle whose classifier ends in a linear layer")
    return layers[-1]


def features(model: nn.Module, readout: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The input of `readout` when `model` runs on `x` (differentiable)."""
    seen: list[torch.Tensor] = []
    handle = readout.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1)


def around(x: torch.Tensor, n: int, radius: float, norm: str, sphere: bool, generator: torch.Generator) -> torch.Tensor:
    """`n` points around `x` (one sample) on the 8-bit grid: inside the radius, or on its sphere (L-inf: corners)."""
    shape = (n, *x.shape[1:])
    if norm == "linf":
        u = torch.rand(shape, generator=generator) * 2 - 1
        delta = (u.sign() if sphere else u) * grid_budget(radius, norm)
    else:
        d = torch.randn(shape, generator=generator)
        d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        scale = torch.ones(n) if sphere else torch.rand(n, generator=generator) ** (1 / d[0].numel())
        delta = d * (radius * scale).view(-1, *[1] * (x.dim() - 1))
    return realise((x + delta).clamp(0, 1), x.expand(shape), radius, norm)


def fit_readout(inner: torch.Tensor, boundary: torch.Tensor, steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """A logistic-regression readout separating inner (0) from boundary (1) features, in the features' units."""
    f = torch.cat([inner, boundary])
    t = torch.cat([torch.zeros(len(inner)), torch.ones(len(boundary))])
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    z = (f - mean) / std
    w = torch.zeros(f.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, t) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight = (w / std).detach()
    return weight, (b - (mean * weight).sum()).detach()


def binarize(model: nn.Module, x: torch.Tensor, config: BinarizationConfig, norm: str,
             generator: torch.Generator) -> Binarized | None:
    """The binarised classifier of one sample `x` (1, C, H, W), or None where inner and boundary points are not
    linearly separable in the model's features (no guarantee, the sample is skipped)."""
    readout = last_linear(model)
    inner = torch.cat([x, around(x, config.inner, config.eta * config.eps, norm, False, generator)])
    boundary = around(x, config.boundary, config.eps, norm, True, generator)
    with torch.no_grad():
        fi, fb = features(model, readout, inner), features(model, readout, boundary)
    weight, bias = fit_readout(fi, fb)
    binarized = Binarized(model, readout, weight, bias)
    with torch.no_grad():
        separated = bool((fi @ weight + bias < 0).all()) and bool((fb @ weight + bias > 0).all())
    return binarized if separated else None


def one_sample(session: Session, index: int, x: torch.Tensor, model: nn.Module) -> Session:
    """`session` narrowed to sample `index` of the binarised task: label 0, the binarised model as every runtime."""
    runtime = TorchRuntime(RuntimeSpec("torch"), model, session.device)
    samples = Samples(torch.zeros(1, dtype=torch.long), lambda a, b: x[a:b], session.samples.shape)
    return replace(session, samples=samples, runtimes=[runtime], reference=model, torch=runtime,
                   offset=session.offset + index)


def run_binarization(session: Session, config: BinarizationConfig) -> BinarizationReport:
    """The test on every sample of `session` the bundle classifies correctly; each attack of `config.attacks` runs
    on its own (so each has a per-sample norm for the optimality score), the cascade's success is any attack's."""
    if session.bundle.score_only:
        raise RobustDeployError(f"bundle {session.bundle.name!r} is score-only: the binarization test needs the "
                                "PyTorch graph's features; use a bundle exported from PyTorch")
    plans = [Plan((spec,), (config.eps,), source=SOURCE) for spec in config.attacks]
    built = [build(plan, config.seed, math.prod(session.samples.shape)) for plan in plans]
    norm = built[0][1]
    if any(n != norm for _, n in built):
        raise RobustDeployError("the attacks of the binarization test must share a norm; set --norm")
    generator = torch.Generator().manual_seed(config.seed)
    x_all, y_all = session.test.x, session.test.y
    with torch.no_grad():
        correct = predict(session.reference, x_all.to(session.device), session.batch_size).cpu() == y_all
    norms: dict[str, list[float]] = {spec.label: [] for spec in config.attacks}
    for i in correct.nonzero().flatten().tolist():
        x = x_all[i : i + 1]
        binarized = binarize(session.reference, x.to(session.device), config, norm, generator)
        if binarized is None:
            continue
        narrow = one_sample(session, i, x, binarized)
        for plan, spec, (attacks, _) in zip(plans, config.attacks, built):
            stored = {"x": x}
            craft(narrow, replace(plan, source_model=binarized), attacks, stored)
            adv = stored[set_key(spec.label, SOURCE, config.eps)]
            with torch.no_grad():
                fooled = bool(binarized(adv.to(session.device)).argmax(1).item() != 0)
            norms[spec.label].append(float(lp_norm(adv - x, norm)) if fooled else math.inf)
    return score(norms, config, norm, len(y_all))


def score(norms: dict[str, list[float]], config: BinarizationConfig, norm: str, samples: int) -> BinarizationReport:
    """Success of the cascade (any attack) and AttackBench's optimality: per valid sample the best (smallest) norm
    any attack found; per attack the mean of best/own norm (1: always the best, 0: never fooled) and the mean
    distance to the best where it fooled."""
    valid = len(next(iter(norms.values())))
    best = [min(n[i] for n in norms.values()) for i in range(valid)]
    fooled = sum(b < math.inf for b in best)
    success = 100.0 * fooled / max(1, valid)
    per_attack = {}
    for label, own in norms.items():
        hits = [i for i in range(valid) if own[i] < math.inf]
        ratio = [best[i] / own[i] if own[i] > 0 else 1.0 for i in hits]
        per_attack[label] = {
            "success": round(100.0 * len(hits) / max(1, valid), 2),
            "optimality": round(sum(ratio) / max(1, fooled), 4),
            "mean_distance_to_best": round(sum(own[i] - best[i] for i in hits) / len(hits), 6) if hits else None}
    return BinarizationReport(config.eps, norm, samples, valid, round(success, 2), config.min_success,
                              valid > 0 and success >= config.min_success, per_attack,
                              [None if b == math.inf else round(b, 6) for b in best])


def binarization_test(config: BinarizationConfig) -> BinarizationReport:
    """Open the bundle, run the test, write the report (JSON) to `config.out` when given."""
    if config.out is not None:
        check_output(Path(config.out), "--out")
    session = open_session(replace(config, runtimes=("torch",)))
    report = run_binarization(session, config)
    if config.out is not None:
        atomic_write_json(Path(config.out), asdict(report))
    return report
