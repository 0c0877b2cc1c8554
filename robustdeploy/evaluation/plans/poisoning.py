"""`poison evaluate` (seed 000's table): victims trained on a poison set at several poison rates, each exported
and scored on clean test data on the PyTorch graph and on every deployment; white-box victims share an
architecture with a surrogate, black-box ones do not. Targeted sets also score the target on each runtime."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.session import SessionConfig, open_session, validate
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.figures import accuracy_curves
from robustdeploy.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    exclusive_outputs,
    versions,
)
from robustdeploy.poison.mix import check_rate
from robustdeploy.poison.store import PoisonSet, load_poison_set
from robustdeploy.poison.surrogates import check_arch
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.runtimes import parse_runtime
from robustdeploy.train import TrainConfig
from robustdeploy.variants import VariantConfig

FORMAT = "robustdeploy-poison-eval/1"
log = logging.getLogger("robustdeploy")


@dataclass(frozen=True)
class PoisonEvalConfig:
    poison: Path
    victims: tuple[str, ...]
    rates: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    runtimes: tuple[str, ...] = ("torch", "ort-cpu")
    epochs: int = 10
    transfer: bool = False  # victims retrain the last layer of a trained extractor (Zhu et al.'s victim)
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    out: Path | None = None  # a folder: result.json, result.md, accuracy.png, runs/ and bundles/


@dataclass(frozen=True)
class Row:
    """One victim at one poison rate."""

    victim: str
    white_box: bool
    rate: float
    replaced: int
    accuracy: dict[str, float]  # runtime -> clean test accuracy (%)
    target_success: dict[str, bool] | None  # runtime -> target classified as the poison class
    differs_from_torch: dict[str, int]  # runtime -> test samples whose label differs from torch's
    parity_passed: bool
    seconds: dict[str, float]
    run: str
    bundle: str


def _check(config: PoisonEvalConfig, poisons: PoisonSet) -> None:
    if not config.victims:
        raise RobustDeployError("give at least one --victim ARCH")
    if not config.rates:
        raise RobustDeployError("give at least one --rate")
    for rate in config.rates:
        check_rate(rate, "--rate")
    if config.epochs < 1:
        raise RobustDeployError(f"--epochs must be at least 1, got {config.epochs}")
    validate(SessionConfig(Path("."), config.runtimes, seed=config.seed, device=config.device))
    if len(set(config.victims)) != len(config.victims):
        raise RobustDeployError(f"a victim is listed twice: {', '.join(config.victims)}")
    data_config = _data(config, poisons)
    data = load_dataset(data_config)
    poisons.check_fits(data_config, data)
    for victim in config.victims:
        check_arch(victim, data)


def _data(config: PoisonEvalConfig, poisons: PoisonSet) -> DataConfig:
    made = poisons.data
    return made if config.data_root is None else DataConfig(**{**made.to_dict(), "data_root": config.data_root})


def _base(config: PoisonEvalConfig, poisons: PoisonSet, victim: str, data: DataConfig, out: Path) -> Path:
    """Transfer mode: the surrogate run of a white-box victim, else a clean run of the victim trained once."""
    for s in poisons.surrogates:
        if s["arch"] == victim and s["run"] is not None:  # a pretrained backbone has no classifier run
            inside = poisons.path / s["run"]  # trained with the set: recorded relative to it
            return inside if inside.is_dir() else Path(s["run"])
    base = out / "runs" / f"{victim.replace(':', '-')}-clean-base"
    if not base.exists():
        train(TrainConfig(arch=victim, data=data, epochs=config.epochs, seed=config.seed, device=config.device), base)
    return base


def _row(config: PoisonEvalConfig, poisons: PoisonSet, victim: str, rate: float, out: Path) -> Row:
    data = _data(config, poisons)
    white_box = victim in {s["arch"] for s in poisons.surrogates}
    name = f"{victim.replace(':', '-')}-rate{rate:g}"
    seconds = {}
    start = time.perf_counter()
    defense = {}
    if config.transfer:
        defense = {"defense": "transfer", "defense_params": {"base": str(_base(config, poisons, victim, data, out))}}
    record = train(TrainConfig(arch=victim, data=data, epochs=config.epochs, seed=config.seed, device=config.device,
                               poison=str(poisons.path), poison_rate=rate, **defense), out / "runs" / name)
    seconds["train"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    precisions = ("fp32", *dict.fromkeys(p for p in (parse_runtime(r).variant for r in config.runtimes)
                                         if p != "fp32"))
    bundle, parity = export_bundle(ExportConfig(run_dir=out / "runs" / name, out=out / "bundles" / name,
                                                data_root=config.data_root, variants=VariantConfig(precisions)))
    seconds["export"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    session = open_session(SessionConfig(bundle.path, config.runtimes, seed=config.seed, device=config.device,
                                         data_root=config.data_root), bundle)
    labels = {label: run(session.test.x) for label, run in session.runners().items()}
    accuracy = {r.label: round(100.0 * float((labels[r.label] == session.test.y).float().mean()), 4)
                for r in session.runtimes}
    differs = {r.label: int((labels[r.label] != labels["torch"]).sum()) for r in session.runtimes}
    success = None
    target = poisons.manifest.get("target")
    if target is not None:
        success = {label: bool(labels[label][target["index"]] == target["poison_class"])
                   for label in accuracy}
    seconds["score"] = round(time.perf_counter() - start, 3)
    log.info("victim %s at poison rate %g: %s", victim, rate,
             ", ".join(f"{k} {v:.2f}%" for k, v in accuracy.items()))
    return Row(victim, white_box, rate, record.metrics["poison"]["replaced"], accuracy, success, differs,
               parity.passed, seconds, str(out / "runs" / name), str(bundle.path))


@exclusive_outputs
def evaluate_poison(config: PoisonEvalConfig) -> dict:
    """Train, export and score every victim x rate; write result.json, result.md and accuracy.png."""
    poisons = load_poison_set(config.poison)
    _check(config, poisons)
    out = Path(config.out) if config.out else Path("results") / f"poison-{poisons.path.name}"
    check_output_dir(out, "--out", False, "choose another --out or delete it")
    start = time.perf_counter()
    rows = [_row(config, poisons, victim, rate, out) for victim in config.victims for rate in config.rates]
    m = poisons.manifest
    result = {"format": FORMAT, "poison": str(poisons.path), "method": m["method"], "alpha": m.get("alpha"),
              "eps": m["eps"], "surrogates": m["surrogates"], "target": m.get("target"), "data": m["data"],
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
              "rows": [asdict(r) for r in rows], "seconds": round(time.perf_counter() - start, 3),
              "versions": versions()}
    atomic_write_json(out / "result.json", result)
    atomic_write_text(out / "result.md", poison_table(result, markdown=True) + "\n")
    series = {f"{v} ({'white' if _white(result, v) else 'black'}-box) {rt}":
              [r["accuracy"][rt] for r in result["rows"] if r["victim"] == v]
              for v in config.victims for rt in rows[0].accuracy}
    curves = {name: list(zip(config.rates, values)) for name, values in series.items()}
    atomic_write_bytes(out / "accuracy.png", accuracy_curves(curves, "poison rate", "clean test accuracy (%)",
                                                             poisons.path.name))
    result["path"] = str(out)
    return result


def _white(result: dict, victim: str) -> bool:
    return next(r["white_box"] for r in result["rows"] if r["victim"] == victim)


def poison_table(result: dict, markdown: bool = False) -> str:
    """Rows = victim x runtime, columns = poison rates (clean test accuracy, %; `*` = target hit)."""
    rates = sorted({r["rate"] for r in result["rows"]})
    rows = []
    for victim in dict.fromkeys(r["victim"] for r in result["rows"]):
        mine = {r["rate"]: r for r in result["rows"] if r["victim"] == victim}
        for runtime in next(iter(mine.values()))["accuracy"]:
            cells = []
            for rate in rates:
                row = mine[rate]
                hit = row["target_success"] and row["target_success"][runtime]
                cells.append(f"{row['accuracy'][runtime]:.2f}{' *' if hit else ''}")
            kind = "white-box" if mine[rates[0]]["white_box"] else "black-box"
            rows.append([victim, kind, runtime, *cells])
    headers = ["victim", "setting", "runtime", *[f"rate {r:g}" for r in rates]]
    text = table(headers, rows, markdown)
    if result.get("target"):
        t = result["target"]
        text += (f"\n\n* = target (test image {t['index']}, class {t['label']}) classified as the poison class "
                 f"{t['poison_class']}")
    return text
