"""Honest defense numbers: every defense attacked obliviously and adaptively, scored on every runtime.

*Oblivious*: PGD crafted on an undefended classifier (the `baseline` run; for a purifier bundle, by default
its own classifier without the purifier) and transferred to the defended deployment, as seeds 002/003 do.
*Adaptive*: PGD crafted on the defended graph itself (Athalye, Carlini and Wagner, ICML 2018): end to end
through the purifier, with the margin loss against distillation (Carlini and Wagner, IEEE S&P 2017), plain
cross-entropy PGD against adversarial training. Examples are rounded to the 8-bit grid before scoring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.attacks import ATTACKS, check_eps, realise_8bit
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluate import load_test_split, open_runtimes
from robustdeploy.io import atomic_write_json, versions
from robustdeploy.train import load_run

RESULT_FORMAT = "robustdeploy-defense-eval/1"
ADAPTIVE_LOSS = {"distillation": "margin"}
OBLIVIOUS_ONLY_GAP = 10.0  # accuracy points lost from oblivious to adaptive that mark a defense as oblivious-only


@dataclass(frozen=True)
class DefenseEvalConfig:
    bundle: Path
    baseline: Path | None = None
    eps: float = 0.1
    steps: int = 40
    runtimes: tuple[str, ...] = ("torch", "ort-cpu")
    limit: int | None = None
    batch_size: int = 256
    seed: int = 0
    data_root: str | None = None
    out: Path | None = None


@dataclass(frozen=True)
class DefenseScore:
    runtime: str
    clean: float
    oblivious: float
    adaptive: float

    @property
    def verdict(self) -> str:
        if self.oblivious - self.adaptive >= OBLIVIOUS_ONLY_GAP:
            return "resists oblivious attacks only"
        return "same under adaptive attack"


@dataclass
class DefenseEvaluation:
    bundle: str
    defense: str
    eps: float
    steps: int
    samples: int
    oblivious_source: str
    adaptive_loss: str
    scores: list[DefenseScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, **asdict(self),
                "verdicts": {s.runtime: s.verdict for s in self.scores}, "versions": versions()}


def defense_of(bundle: Bundle) -> str:
    return bundle.manifest.get("run", {}).get("train", {}).get("defense", "none")


def oblivious_model(bundle: Bundle, baseline: Path | None) -> tuple[torch.nn.Module, str]:
    """The undefended classifier the oblivious attacker sees."""
    if baseline is not None:
        model, record = load_run(baseline)
        if record.spec.input_shape != bundle.input_shape or record.spec.num_classes != bundle.spec.num_classes:
            raise RobustDeployError(f"--baseline {baseline} has input {record.spec.input_shape} and "
                                    f"{record.spec.num_classes} classes; the bundle needs {bundle.input_shape} "
                                    f"and {bundle.spec.num_classes}")
        return model, str(baseline)
    if defense_of(bundle) == "none":
        return bundle.reference_model(), "the bundle itself (no defense)"
    if bundle.spec.extra.get("purifier"):
        return bundle.reference_model().classifier, "bundle classifier without purifier"
    raise RobustDeployError(f"bundle {bundle.name!r} ({defense_of(bundle)}) needs --baseline RUN_DIR: oblivious "
                            "attacks are crafted on an undefended classifier trained with `robustdeploy train`")


def craft(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, loss: str,
          seed: int, batch_size: int) -> torch.Tensor:
    attack = ATTACKS.create("pgd", steps=steps, loss=loss, seed=seed)
    model = model.eval().requires_grad_(False)
    adv = torch.cat([attack.perturb(model, x[i : i + batch_size], y[i : i + batch_size], eps).detach()
                     for i in range(0, len(x), batch_size)])
    return realise_8bit(adv, x, eps, "linf")


def evaluate_defense(config: DefenseEvalConfig) -> DefenseEvaluation:
    """Clean, oblivious-PGD and adaptive-PGD accuracy of a defended bundle on each runtime."""
    bundle = load_bundle(config.bundle)
    check_eps(config.eps, "linf", 1)
    if config.steps < 1:
        raise RobustDeployError(f"--steps must be at least 1, got {config.steps}")
    source, source_name = oblivious_model(bundle, config.baseline)
    runtimes = open_runtimes(bundle, config.runtimes, "cpu")
    test = load_test_split(bundle, config.data_root, config.limit)
    defense = defense_of(bundle)
    loss = ADAPTIVE_LOSS.get(defense, "ce")
    torch.manual_seed(config.seed)
    oblivious = craft(source, test.x, test.y, config.eps, config.steps, "ce", config.seed, config.batch_size)
    adaptive = craft(bundle.reference_model(), test.x, test.y, config.eps, config.steps, loss, config.seed,
                     config.batch_size)
    result = DefenseEvaluation(str(bundle.path), defense, config.eps, config.steps, len(test), source_name, loss)
    for runtime in runtimes:
        acc = [100.0 * float((runtime.predict(x, config.batch_size) == test.y).float().mean())
               for x in (test.x, oblivious, adaptive)]
        result.scores.append(DefenseScore(runtime.label, *acc))
    atomic_write_json(Path(config.out or Path("results") / f"{bundle.name}-defense.json"), result.to_dict())
    return result


def defense_table(result: DefenseEvaluation) -> str:
    head = (f"{result.defense} | PGD L-inf eps={result.eps:g}, {result.steps} steps, {result.samples} samples | "
            f"oblivious: crafted on {result.oblivious_source} | adaptive: through the defense, "
            f"{result.adaptive_loss} loss")
    rows = [f"{'runtime':<10} {'clean':>7} {'oblivious':>10} {'adaptive':>9}  verdict"]
    rows += [f"{s.runtime:<10} {s.clean:>6.1f}% {s.oblivious:>9.1f}% {s.adaptive:>8.1f}%  {s.verdict}"
             for s in result.scores]
    return "\n".join([head, *rows])
