"""After an evaluation: sanity checks (stored in the result, printed as warnings) and the example figure."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robustdeploy import checks
from robustdeploy.attacks import ATTACKS
from robustdeploy.figures import example_figure, pick_examples
from robustdeploy.runtimes import Capability, Runtime


def robust_table(data: dict) -> dict[tuple[str, float], float]:
    """(runtime, eps) -> robust accuracy % of a result JSON (white-box or black-box)."""
    return {(s["runtime"], b["eps"]): s["robust_accuracy"] for b in data["budgets"] for s in b["scores"]}


def run_checks(result: dict, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               logits: list[torch.Tensor], compare_with: Path | None = None) -> list[dict]:
    """All sanity checks that apply to `result` (a result's dict); the PyTorch graph serves the gradient check."""
    table = robust_table(result)
    curves: dict[str, list[tuple[float, float]]] = {}
    for (runtime, eps), acc in table.items():
        curves.setdefault(runtime, []).append((eps, acc))
    success = {(s["runtime"], b["eps"]): s["attack_success_rate"] for b in result["budgets"] for s in b["scores"]}
    found = [checks.monotone_budget(curves), checks.unbounded_success(success, result["norm"], x[0].numel()),
             checks.input_gradients(model, x, y), *[checks.outputs_are_logits(z) for z in logits[:1]]]
    if compare_with is not None:
        other = json.loads(Path(compare_with).read_text())
        blackbox = ATTACKS.get(result["attack"]).needs < Capability.GRADIENTS
        comparable = other["norm"] == result["norm"] and other["samples"] == result["samples"]
        if comparable and blackbox != (ATTACKS.get(other["attack"]).needs < Capability.GRADIENTS):
            pair = (table, robust_table(other)) if blackbox else (robust_table(other), table)
            found.append(checks.blackbox_not_stronger(*pair))
    return [c.to_dict() for c in checks.collect(found)]


def write_figure(path: Path, runtimes: list[Runtime], x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor,
                 title: str) -> str:
    """The PNG of a few examples, predictions of every runtime under each; returns its file name."""
    adv_pred = runtimes[0].predict(adv)
    index = pick_examples(x, adv, y, adv_pred)
    predictions = {r.label: (r.predict(x[index]), r.predict(adv[index])) for r in runtimes}
    example_figure(path, x[index], adv[index], y[index], predictions, title)
    return path.name
