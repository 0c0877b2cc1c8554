"""typer option aliases shared by the CLI commands (one definition per option)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Seed = Annotated[int, typer.Option(help="Random seed (recorded in every result).")]
Device = Annotated[str, typer.Option(help="PyTorch device for training and crafting attacks: cpu or cuda.")]
DataRoot = Annotated[str | None, typer.Option(help="Folder holding the dataset (not needed for digits).")]
BatchSize = Annotated[int, typer.Option(help="Samples per batch.")]
Limit = Annotated[int | None, typer.Option(help="Evaluate only the first N test samples.")]
Runtimes = Annotated[
    list[str],
    typer.Option("--runtime", "-r", help="Runtime[:variant]: torch, ort-cpu, ort-cuda, ort-trt (repeatable)."),
]
Attack = Annotated[str, typer.Option(help="Attack name (see `robustdeploy list`).")]
Attacks = Annotated[list[str], typer.Option("--attack", help="Attack name[:loss] (see `robustdeploy list`); repeat "
                                            "for a cascade, each run on the samples the earlier ones left robust.")]
Epsilons = Annotated[list[float], typer.Option("--eps", help="Budget(s) in pixel units; repeat for a curve.")]
Norm = Annotated[str | None, typer.Option(help="Threat model: linf or l2 (attack default: linf).")]
Steps = Annotated[int | None, typer.Option(help="Attack iterations (attack default).")]
Loss = Annotated[str | None, typer.Option(help="Attack loss: ce, margin or dlr (attack default: ce).")]
Restarts = Annotated[int | None, typer.Option(help="Random restarts (attack default: 1).")]
AttackOpts = Annotated[
    list[str], typer.Option("--attack-opt", help="Any other attack knob as key=value (repeatable).")
]
OutFile = Annotated[Path | None, typer.Option("--out", help="Where to write the JSON result.")]
BundleDir = Annotated[Path, typer.Argument(help="Bundle folder written by `robustdeploy export`.")]
RunDir = Annotated[Path, typer.Argument(help="Run folder written by `robustdeploy train`.")]
