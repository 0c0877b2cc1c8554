"""The CI gate: every deployment against the PyTorch training graph, with a verdict per check.

Writes a Markdown summary (fit for a CI job summary) and JUnit XML; the CLI exits 0 when all pass, 1 when a
check fails, 2 on a usage error.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustdeploy.bundle import load_bundle
from robustdeploy.compare import AttackSpec, craft_attack_set, default_runtimes
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluate import load_test_split, open_runtimes, predict_labels
from robustdeploy.io import atomic_write_bytes, atomic_write_text, versions
from robustdeploy.report import table

# A small fixed attack set: cheap enough for every CI run, strong enough to expose a robustness gap.
DEFAULT_ATTACKS = (AttackSpec("fgsm", 0.05), AttackSpec("pgd", 0.05, {"steps": 10}))


@dataclass(frozen=True)
class CheckConfig:
    bundle: Path
    runtimes: tuple[str, ...] = ()  # default: every variant of the bundle on ort-cpu
    max_accuracy_drop: float = 0.5  # points
    min_agreement: float = 99.5  # percent
    max_robust_drop: float = 2.0  # points
    attacks: tuple[AttackSpec, ...] = DEFAULT_ATTACKS
    limit: int | None = None
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    markdown: Path | None = None
    junit: Path | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop < 0 or self.max_robust_drop < 0:
            raise RobustDeployError("--max-accuracy-drop and --max-robust-drop are points >= 0")
        if not 0 <= self.min_agreement <= 100:
            raise RobustDeployError("--min-agreement is a percentage in [0, 100]")


@dataclass(frozen=True)
class CheckItem:
    runtime: str
    check: str
    measured: float
    limit: float
    passed: bool
    detail: str


@dataclass
class CheckReport:
    bundle: str
    samples: int
    items: list[CheckItem]
    versions: dict = field(default_factory=versions)

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.items)

    def to_dict(self) -> dict:
        return {"format": "robustdeploy-check/1", "passed": self.passed, **asdict(self)}

    def lines(self) -> list[str]:
        return [f"{'PASSED' if i.passed else 'FAILED'} {i.runtime} {i.check}: {i.detail}" for i in self.items]

    def markdown(self) -> str:
        verdict = "✅ all checks passed" if self.passed else "❌ some checks failed"
        rows = [[i.runtime, i.check, f"{i.measured:.2f}", f"{i.limit:g}", "PASSED" if i.passed else "FAILED"]
                for i in self.items]
        head = f"## robustdeploy check: {verdict}\n\nBundle `{self.bundle}`, {self.samples} test samples.\n\n"
        return head + table(["runtime", "check", "measured", "limit", "verdict"], rows, markdown=True) + "\n"

    def junit(self) -> bytes:
        failures = sum(not i.passed for i in self.items)
        suite = ET.Element("testsuite", name="robustdeploy.check", tests=str(len(self.items)),
                           failures=str(failures), errors="0")
        for item in self.items:
            case = ET.SubElement(suite, "testcase", classname=f"robustdeploy.{item.runtime}", name=item.check)
            if not item.passed:
                ET.SubElement(case, "failure", message=item.detail).text = item.detail
        return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((pred == y).float().mean())


def run_check(config: CheckConfig) -> CheckReport:
    """Measure clean accuracy drop, agreement and robust accuracy drop of each deployment vs PyTorch."""
    bundle = load_bundle(config.bundle)
    names = config.runtimes or tuple(n for n in default_runtimes(bundle) if n != "torch")
    if "torch" in names:
        raise RobustDeployError("check compares deployments with the torch graph; drop --runtime torch")
    runtimes = open_runtimes(bundle, names, config.device)
    test = load_test_split(bundle, config.data_root, config.limit)
    reference = bundle.reference_model().to(config.device).requires_grad_(False)
    dim = int(torch.tensor(bundle.input_shape).prod())
    torch_clean = predict_labels(reference, test.x, config.batch_size, config.device)
    adversarials = {
        label: (adv, _accuracy(predict_labels(reference, adv, config.batch_size, config.device), test.y))
        for label, adv in craft_attack_set(config.attacks, reference, test, dim, config.seed, config.batch_size,
                                           config.device).items()
    }
    base = _accuracy(torch_clean, test.y)
    items = []
    for runtime in runtimes:
        clean = runtime.predict(test.x, config.batch_size)
        drop = base - _accuracy(clean, test.y)
        items.append(CheckItem(runtime.label, "clean accuracy drop", drop, config.max_accuracy_drop,
                               drop <= config.max_accuracy_drop,
                               f"torch {base:.2f}% -> {_accuracy(clean, test.y):.2f}% "
                               f"(drop {drop:.2f} points, max {config.max_accuracy_drop:g})"))
        agreement = _accuracy(clean, torch_clean)
        items.append(CheckItem(runtime.label, "top-1 agreement", agreement, config.min_agreement,
                               agreement >= config.min_agreement,
                               f"{agreement:.2f}% of predictions match torch (min {config.min_agreement:g}%)"))
        for label, (adv, torch_robust) in adversarials.items():
            robust = _accuracy(runtime.predict(adv, config.batch_size), test.y)
            rdrop = torch_robust - robust
            items.append(CheckItem(runtime.label, f"robust accuracy drop {label}", rdrop, config.max_robust_drop,
                                   rdrop <= config.max_robust_drop,
                                   f"torch {torch_robust:.2f}% -> {robust:.2f}% under {label} "
                                   f"(drop {rdrop:.2f} points, max {config.max_robust_drop:g})"))
    report = CheckReport(str(bundle.path), len(test), items)
    if config.markdown:
        atomic_write_text(Path(config.markdown), report.markdown())
    if config.junit:
        atomic_write_bytes(Path(config.junit), report.junit())
    return report
