"""One result shape for every kind of evaluation, one key scheme for stored examples (`[group:]attack/source/
eps=E` in the safetensors beside the JSON), one save and load; every cell re-scores from the stored sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from robustdeploy.errors import RobustDeployError
from robustdeploy.io import atomic_write_bytes, atomic_write_json, read_document, versions

FORMAT = "robustdeploy-result/2"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Result:
    """Header (what was evaluated, how, with which software), the crafted sets, and the scored cells."""

    kind: str
    scorer: str
    bundle: str
    seed: int
    samples: int
    limit: int | None
    data: dict
    runtimes: list[dict]
    norm: str | None = None
    epsilons: list[float] = field(default_factory=list)
    attacks: list[dict] = field(default_factory=list)
    sets: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    adversarial_file: str | None = None
    figure: str | None = None
    complete: bool = False
    versions: dict = field(default_factory=versions)
    started: str = field(default_factory=_now)
    path: Path | None = field(default=None, repr=False, compare=False)  # where it was saved; not stored

    def to_dict(self) -> dict:
        return {"format": FORMAT, **{k: v for k, v in asdict(self).items() if k != "path"}}

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        return cls(**{k: v for k, v in data.items() if k != "format"})

    def cell(self, runtime: str, eps: float, attack: str | None = None) -> dict:
        """The cell of (runtime, eps) after `attack` (default: the whole cascade, i.e. the worst case)."""
        found = [c for c in self.cells if c["runtime"] == runtime and abs(c["eps"] - eps) < 1e-12
                 and (attack is None or c["attack"] == attack)]
        if not found:
            raise KeyError((runtime, eps, attack))
        return found[-1]

    def runtime_labels(self) -> list[str]:
        return [r["runtime"] for r in self.runtimes]


def adversarial_path(out: Path) -> Path:
    return Path(out).with_suffix(".adv.safetensors")


def save_result(out: Path, result: Result, stored: dict[str, torch.Tensor]) -> None:
    """Examples first, then the JSON that points at them: whatever is on disk is re-scorable."""
    out = Path(out)
    result.path, result.adversarial_file = out, adversarial_path(out).name
    atomic_write_bytes(adversarial_path(out), save({k: v.contiguous() for k, v in stored.items()}))
    atomic_write_json(out, result.to_dict())


def load_result(path: Path) -> tuple[Result, dict[str, torch.Tensor]]:
    """A result and its stored examples; a damaged or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RobustDeployError(f"result {path} not found; give the JSON that `robustdeploy evaluate` wrote")
    data = read_document(path, FORMAT, "give a result written by this version of robustdeploy")
    try:
        result = Result.from_dict(data)
        stored = load_file(str(path.parent / result.adversarial_file))
    except Exception as exc:  # a hand-edited or truncated result: say so rather than guess
        raise RobustDeployError(f"cannot read result {path} or its examples ({exc}); re-run the evaluation") \
            from None
    return result, stored


SAME = ("kind", "bundle", "seed", "samples", "limit", "norm", "attacks")


def load_matching(out: Path, fresh: Result) -> tuple[Result, dict[str, torch.Tensor]]:
    """The result at `out` and its tensors, refused unless it was made with `fresh`'s settings."""
    previous, stored = load_result(out)
    if any(getattr(previous, k) != getattr(fresh, k) for k in SAME) or \
            previous.runtime_labels() != fresh.runtime_labels():
        raise RobustDeployError(f"{out} was made with other settings; use another --out or drop --resume")
    return previous, stored


def resume_from(out: Path, fresh: Result) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Sets already crafted by an interrupted run with the same settings, and their tensors."""
    previous, stored = load_matching(out, fresh)
    return previous.sets, stored
