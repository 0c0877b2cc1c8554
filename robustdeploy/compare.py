"""One row per runtime/variant: clean accuracy, agreement with PyTorch fp32, transferred robustness, latency."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.attacks import check_eps, realise_8bit
from robustdeploy.bench import BenchConfig, bench
from robustdeploy.bundle import Bundle, load_bundle
from robustdeploy.data import Split
from robustdeploy.evaluate import craft, load_test_split, make_attack, open_runtimes, predict_labels
from robustdeploy.io import atomic_write_json, atomic_write_text, versions
from robustdeploy.report import table
from robustdeploy.runtimes import Runtime
from robustdeploy.runtimes.base import Capability


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a comparison: crafted on PyTorch fp32 at `eps`, then transferred to every runtime."""

    name: str = "pgd"
    eps: float = 0.1
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.eps:g}"


@dataclass(frozen=True)
class CompareConfig:
    bundle: Path
    runtimes: tuple[str, ...] = ()  # default: torch + every variant of the bundle on ort-cpu
    attacks: tuple[AttackSpec, ...] = (AttackSpec("fgsm", 0.1), AttackSpec("pgd", 0.1))
    limit: int | None = None
    batch_size: int = 256
    latency_batch: int = 1
    latency_iterations: int = 50
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    out: Path | None = None


@dataclass(frozen=True)
class CompareRow:
    runtime: str
    clean_accuracy: float
    agreement_with_torch: float
    robust_accuracy: dict[str, float]
    median_latency_ms: float


@dataclass
class CompareResult:
    bundle: str
    samples: int
    seed: int
    attacks: list[dict]
    rows: list[CompareRow]
    versions: dict = field(default_factory=versions)

    def to_dict(self) -> dict:
        return {"format": "robustdeploy-compare/1", **asdict(self)}

    def table(self, markdown: bool = False) -> str:
        labels = [AttackSpec(**a).label for a in self.attacks]
        headers = ["runtime", "clean %", "agree %", *[f"robust % {label}" for label in labels], "p50 ms"]
        rows = [[r.runtime, r.clean_accuracy, r.agreement_with_torch, *[r.robust_accuracy[k] for k in labels],
                 f"{r.median_latency_ms:.3f}"] for r in self.rows]
        return table(headers, rows, markdown)


def craft_attack_set(attacks: tuple[AttackSpec, ...], reference: torch.nn.Module, test: Split, dim: int, seed: int,
                     batch_size: int, device: str) -> dict[str, torch.Tensor]:
    """Each attack crafted once on the PyTorch fp32 graph, to be transferred to every runtime."""
    adversarials = {}
    for spec in attacks:
        attack = make_attack(spec.name, {"seed": seed, **spec.params})
        check_eps(spec.eps, attack.norm, dim)
        if attack.needs < Capability.GRADIENTS:
            continue  # black-box attacks run on each runtime itself (see run_on_runtime)
        torch.manual_seed(seed)
        adv = craft(attack, reference, test, test.x, spec.eps, batch_size, device)
        adversarials[spec.label] = realise_8bit(adv, test.x, spec.eps, attack.norm)  # what a deployment receives
    return adversarials


def run_on_runtime(spec: AttackSpec, runtime: Runtime, test: Split, seed: int, batch_size: int) -> torch.Tensor:
    """A score- or decision-based attack against the deployment itself, using only its outputs (8-bit rounded)."""
    attack = make_attack(spec.name, {"seed": seed, **spec.params})
    torch.manual_seed(seed)
    adv = torch.cat([attack.perturb(runtime.logits, test.x[i : i + batch_size], test.y[i : i + batch_size],
                                    spec.eps) for i in range(0, len(test), batch_size)])
    return realise_8bit(adv, test.x, spec.eps, attack.norm)


def default_runtimes(bundle: Bundle) -> tuple[str, ...]:
    return ("torch", *[f"ort-cpu:{v}" if v != "fp32" else "ort-cpu" for v in bundle.variants])


def compare(config: CompareConfig) -> CompareResult:
    """Gradient attacks are crafted once on PyTorch fp32 and transferred; black-box ones run on each runtime."""
    bundle = load_bundle(config.bundle)
    names = config.runtimes or default_runtimes(bundle)
    runtimes = open_runtimes(bundle, names, config.device)
    test = load_test_split(bundle, config.data_root, config.limit)
    dim = int(torch.tensor(bundle.input_shape).prod())
    reference = bundle.reference_model().to(config.device).requires_grad_(False)
    torch_clean = predict_labels(reference, test.x, config.batch_size, config.device)
    adversarials = craft_attack_set(config.attacks, reference, test, dim, config.seed, config.batch_size,
                                    config.device)
    latency = bench(BenchConfig(bundle.path, tuple(names), (config.latency_batch,), warmup=5,
                                iterations=config.latency_iterations, device=config.device, seed=config.seed))
    rows = []
    for runtime, timing in zip(runtimes, latency.rows):
        clean = runtime.predict(test.x, config.batch_size)
        own = {spec.label: run_on_runtime(spec, runtime, test, config.seed, config.batch_size)
               for spec in config.attacks if spec.label not in adversarials}
        robust = {label: 100.0 * float((runtime.predict(adv, config.batch_size) == test.y).float().mean())
                  for label, adv in (adversarials | own).items()}
        rows.append(CompareRow(runtime.label, 100.0 * float((clean == test.y).float().mean()),
                               100.0 * float((clean == torch_clean).float().mean()), robust, timing.p50_ms))
    result = CompareResult(str(bundle.path), len(test), config.seed,
                           [asdict(a) for a in config.attacks], rows)
    if config.out:
        out = Path(config.out)
        atomic_write_json(out, result.to_dict())
        atomic_write_text(out.with_suffix(".md"), result.table(markdown=True) + "\n")
    return result
