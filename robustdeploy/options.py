"""typer option aliases shared by the CLI commands (one definition per option)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustdeploy.catalog import names

Seed = Annotated[int | None, typer.Option(help="Random seed (recorded in every result; default 0).")]
Device = Annotated[str | None, typer.Option(help="PyTorch device for training and crafting attacks: cpu (default), "
                                                 "cuda or cuda:N.")]
DataRoot = Annotated[str | None, typer.Option(help="Folder holding the dataset (not needed for digits).")]
BatchSize = Annotated[int | None, typer.Option(help="Samples per batch.")]
Window = Annotated[int | None, typer.Option(help="Samples held in memory at a time, rounded up to whole "
                                                 "batches (default: 64 MiB of pixels); a larger split goes window "
                                                 "by window through disk.")]
Limit = Annotated[int | None, typer.Option(help="Evaluate only the first N test samples.")]
Runtimes = Annotated[
    list[str] | None,
    typer.Option("--runtime", "-r", help=f"Runtime[:variant]: {', '.join(names('runtimes'))} (repeatable)."),
]
Attack = Annotated[str | None, typer.Option(help=f"Attack: {', '.join(names('attacks'))}.")]
Attacks = Annotated[list[str] | None, typer.Option("--attack", help=f"Attack[:loss]: {', '.join(names('attacks'))}; "
                                                   "repeat for a cascade, each attack run on the samples the earlier "
                                                   "ones left robust.")]
Epsilons = Annotated[list[float] | None, typer.Option("--eps", help="Budget(s) in pixel units; repeat for a curve.")]
Arch = Annotated[str, typer.Option(help=f"Architecture: {', '.join(names('architectures'))}, timm:<name>, tv:<name>.")]
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
