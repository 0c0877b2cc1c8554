"""`run suite.toml`: every evaluation of a suite file on every bundle it names, one result file each, written as
it goes; a restarted suite skips the results already complete (and continues an interrupted `evaluate`)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from robustdeploy import devices
from robustdeploy.attacks import ATTACKS, cascade, make_attack
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation import shards
from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
from robustdeploy.evaluation.plans.detector import evaluate_detector
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.plans.gate import CheckConfig, run_check
from robustdeploy.evaluation.results import Result, load_result
from robustdeploy.registry import Registry
from robustdeploy.runtimes import parse_runtime

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

log = logging.getLogger("robustdeploy")

# Keys a suite may set, with their types: the session's (in [defaults] or any evaluation), then each kind's own.
COMMON = {"runtimes": list, "limit": int, "batch_size": int, "seed": int, "device": str, "data_root": str}
CASCADE = {"attacks": list, "eps": list, "params": dict, "realise": bool}
KEYS = {
    "evaluate": {**CASCADE, "window": int},
    "detector": {**CASCADE, "adaptive_steps": int, "adaptive_targets": int, "adaptive_restarts": int,
                 "adaptive_inner": str},
    "defense": {"baseline": str, "attack": str, "eps": float, "steps": int},
    "check": {"attacks": list, "eps": list, "max_accuracy_drop": float, "min_agreement": float,
              "max_robust_drop": float},
}
KINDS: Registry[Callable[..., Result]] = Registry("evaluation kind")


@dataclass(frozen=True)
class Job:
    """One evaluation of one bundle, and the result file it writes."""

    bundle: Path
    name: str
    kind: str
    options: dict
    out: Path

    @property
    def title(self) -> str:
        return f"{self.bundle.name}/{self.name}"


@dataclass(frozen=True)
class Done:
    job: Job
    status: str  # "ran", "resumed" (an interrupted `evaluate` continued) or "skipped" (already complete)
    result: Result


def _fields(options: dict) -> dict:
    """The suite's lists (`runtimes`, `attacks`, a list of `eps`) as the config fields they are; pops them."""
    found = {k: tuple(options.pop(k)) for k in ("runtimes", "attacks") if k in options}
    if isinstance(options.get("eps"), list):
        found["epsilons"] = tuple(float(e) for e in options.pop("eps"))
    return found


@KINDS.register("evaluate")
def _evaluate(job: Job) -> Result:
    options = dict(job.options)
    fields = _fields(options)
    return evaluate(EvalConfig(bundle=job.bundle, out=job.out, resume=True,
                               attack_params=options.pop("params", {}), **fields, **options))


@KINDS.register("detector")
def _detector(job: Job) -> Result:
    options = dict(job.options)
    fields = _fields(options)
    adaptive = AdaptiveSqueezeAttack(inner=options.pop("adaptive_inner", "pgd"),
                                     steps=options.pop("adaptive_steps", 200),
                                     targets=options.pop("adaptive_targets", 3),
                                     restarts=options.pop("adaptive_restarts", 2), seed=options.get("seed", 0))
    return evaluate_detector(EvalConfig(bundle=job.bundle, out=job.out, resume=True,
                                        attack_params=options.pop("params", {}), **fields, **options), adaptive)


@KINDS.register("defense")
def _defense(job: Job) -> Result:
    options = dict(job.options)
    fields = _fields(options)
    if "baseline" in options:
        options["baseline"] = Path(options["baseline"])
    return evaluate_defense(DefenseEvalConfig(bundle=job.bundle, out=job.out, **fields, **options))


@KINDS.register("check")
def _check(job: Job) -> Result:
    options = dict(job.options)
    fields = _fields(options)
    if "attacks" in fields:
        fields["attacks"] = cascade(fields["attacks"], {})
    if "runtimes" in fields:  # the gate compares deployments with torch, always measured
        fields["runtimes"] = tuple(r for r in fields["runtimes"] if r != "torch")
    return run_check(CheckConfig(bundle=job.bundle, out=job.out, markdown=None, junit=None, **fields, **options))[0]


def _typed(where: str, key: str, value: object, kind: type) -> object:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RobustDeployError(f"{where}: {key} must be {'a' if kind is not int else 'an'} {kind.__name__}, "
                                f"got {value!r}")
    if kind is list and key in ("runtimes", "attacks") and not all(isinstance(v, str) for v in value):
        raise RobustDeployError(f"{where}: {key} must be a list of names, got {value!r}")
    if kind is list and key == "eps" and not all(isinstance(v, (int, float)) for v in value):
        raise RobustDeployError(f"{where}: eps must be a list of numbers, got {value!r}")
    return value


def _options(where: str, table: dict, allowed: dict) -> dict:
    """`table` checked against `allowed` (key -> type); an unknown key or a wrong type is one error."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise RobustDeployError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return {k: _typed(where, k, v, allowed[k]) for k, v in table.items()}


@contextlib.contextmanager
def _key(where: str, key: str) -> Iterator[None]:
    """An error while checking `key` of a suite entry, prefixed with the entry and the key."""
    try:
        yield
    except RobustDeployError as exc:
        raise RobustDeployError(f"{where}: {key}: {exc}") from None


def _check_values(where: str, kind: str, options: dict) -> None:
    """What the types allow but the evaluation would refuse (a runtime, an attack option, a budget, a size),
    checked for every entry before the first evaluation runs."""
    for key in ("limit", "batch_size", "window", "steps", "adaptive_steps", "adaptive_targets", "adaptive_restarts"):
        if key in options and options[key] < 1:
            raise RobustDeployError(f"{where}: {key} must be at least 1, got {options[key]}")
    with _key(where, "runtimes"):
        for name in options.get("runtimes", ()):
            parse_runtime(name)
    with _key(where, "device"):
        devices.check_device(options.get("device", "cpu"))
    norm = options.get("params", {}).get("norm", "linf")
    for eps in options["eps"] if isinstance(options.get("eps"), list) else [options.get("eps", 0.0)]:
        if eps < 0 or (norm == "linf" and eps > 1):
            raise RobustDeployError(f"{where}: eps: {eps:g} is outside [0, 1] for the linf norm on pixels in [0, 1]")
    if kind in ("evaluate", "detector") or "attacks" in options:
        attacks = tuple(options.get("attacks", EvalConfig.attacks))
        with _key(where, "params" if options.get("params") else "attacks"):
            for spec in cascade(attacks, options.get("params", {})):
                make_attack(spec, options.get("seed", 0))
    if kind == "defense" and "attack" in options:
        with _key(where, "attack"):
            ATTACKS.get(options["attack"])


def load_suite(path: Path, out: Path | None = None) -> list[Job]:
    """The jobs of the suite at `path` (bundles x evaluations), validated before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise RobustDeployError(f"suite {path} not found; give a TOML file (see README, Suites)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RobustDeployError(f"{path} is not valid TOML ({exc}); fix the file") from None
    where = path.name
    _options(where, {k: v for k, v in data.items() if k not in ("defaults", "evaluation")},
             {"bundles": list, "out": str})
    base = path.parent
    bundles = [base / b for b in data.get("bundles", [])]
    if not bundles or not all(isinstance(b, str) for b in data["bundles"]):
        raise RobustDeployError(f"{where}: give bundles = [\"path/to/bundle\", ...]")
    missing = [b for b in bundles if not (b / "manifest.json").is_file()]
    if missing:
        raise RobustDeployError(f"{where}: bundle {missing[0]} not found (no manifest.json); paths are relative "
                                "to the suite file")
    if not isinstance(data.get("defaults", {}), dict):
        raise RobustDeployError(f"{where}: defaults must be a table ([defaults] with keys below it)")
    defaults = _options(f"{where} [defaults]", data.get("defaults", {}), COMMON)
    entries = data.get("evaluation", [])
    if not entries or not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RobustDeployError(f"{where}: give at least one [[evaluation]] table")
    folder = Path(out) if out else base / data.get("out", f"{path.stem}-results")
    jobs, names = [], set()
    for i, entry in enumerate(entries, start=1):
        name, kind = entry.get("name"), entry.get("kind", "evaluate")
        label = f"{where} evaluation {i}" + (f" ({name})" if name else "")
        if not isinstance(name, str) or not name or "/" in name:
            raise RobustDeployError(f"{label}: give it a name (letters, digits, - and _), used for its result file")
        if name in names:
            raise RobustDeployError(f"{label}: the name {name!r} is used twice")
        names.add(name)
        KINDS.get(kind)  # unknown kinds fail with a suggestion
        rest = {k: v for k, v in entry.items() if k not in ("name", "kind")}
        options = {**defaults, **_options(label, rest, {**COMMON, **KEYS[kind]})}
        _check_values(label, kind, options)
        jobs += [Job(b, name, kind, options, folder / b.name / f"{name}.json") for b in bundles]
    return jobs


def finished(job: Job) -> Result | None:
    """The job's complete result on disk, if any."""
    if not job.out.is_file():
        return None
    try:
        result = load_result(job.out)[0]
    except RobustDeployError:
        return None
    return result if result.complete else None


def run_suite(path: Path, out: Path | None = None) -> list[Done]:
    """Run every job not already complete, in order; gate failures are reported after the whole suite ran."""
    jobs = load_suite(path, out)
    done: list[Done] = []
    for number, job in enumerate(jobs, start=1):
        previous = finished(job)
        if previous is not None:
            log.info("suite [%d/%d] %s: already complete in %s, skipped", number, len(jobs), job.title, job.out)
            done.append(Done(job, "skipped", previous))
            continue
        if shards.Group.from_env().rank != 0 and job.kind != "evaluate":
            continue  # under torchrun only `evaluate` is sharded; rank 0 runs the others alone
        status = "resumed" if job.out.is_file() or shards.folder(job.out).is_dir() else "ran"
        log.info("suite [%d/%d] %s: %s", number, len(jobs), job.title, job.kind)
        done.append(Done(job, status, KINDS.get(job.kind)(job)))
    return done


def failed_gates(done: list[Done]) -> list[str]:
    return [d.job.title for d in done if d.job.kind == "check" and not d.result.extra.get("passed", True)]
