"""The robustdeploy command line: a thin typer shell over the library (parse, call one function, print)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from robustdeploy import options as opt
from robustdeploy.errors import RobustDeployError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Does my image classifier stay accurate and robust once it is deployed?",
)


def echo(text: str = "") -> None:
    typer.echo(text)


def _parse_attack_opts(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RobustDeployError(f"--attack-opt {item!r} is not key=value")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def attack_params(norm, steps, loss, restarts, extra: list[str]) -> dict:
    given = {"norm": norm, "steps": steps, "loss": loss, "restarts": restarts}
    return {k: v for k, v in given.items() if v is not None} | _parse_attack_opts(extra)


@app.command()
def train(
    arch: Annotated[str, typer.Option(help="Architecture: mlp, mlp-d, mlp-bn, cnn, cnn-d, cnn-bn, timm:<name>.")]
    = "cnn",
    dataset: Annotated[str, typer.Option(help="Dataset name (see `robustdeploy list`).")] = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: opt.BatchSize = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<arch>-<dataset>).")] = None,
    data_root: opt.DataRoot = None,
    download: Annotated[bool, typer.Option(help="Download a torchvision dataset into --data-root.")] = False,
    image_size: Annotated[int | None, typer.Option(help="Resize images to this size.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of training data held out for validation.")]
    = 0.15,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
) -> None:
    """Train a classifier and write a run folder (safetensors weights + run.json)."""
    from robustdeploy.data import DataConfig
    from robustdeploy.train import TrainConfig
    from robustdeploy.train import train as run_training

    data = DataConfig(name=dataset, data_root=data_root, seed=seed, val_fraction=val_fraction,
                      image_size=image_size, download=download)
    config = TrainConfig(arch=arch, data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device)
    out = out or Path("runs") / f"{arch.replace(':', '-')}-{dataset}"
    record = run_training(config, out)
    m = record.metrics
    echo(f"trained {arch} on {dataset}: val {m['val_accuracy']:.2f}%  test {m['test_accuracy']:.2f}%  "
         f"({m['train_seconds']:.1f}s) -> {out}")


@app.command()
def export(
    run_dir: opt.RunDir,
    out: Annotated[Path | None, typer.Option(help="Bundle folder (default export/<run name>).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    exporter: Annotated[str, typer.Option(help="dynamo (torch.export) or torchscript.")] = "dynamo",
    atol: Annotated[float, typer.Option(help="Parity: absolute logit tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Parity: relative logit tolerance.")] = 1e-3,
    min_agreement: Annotated[float, typer.Option(help="Parity: minimum top-1 agreement, percent.")] = 99.5,
    data_root: opt.DataRoot = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
) -> None:
    """Export a run to an ONNX deployment bundle and check ONNX Runtime CPU against PyTorch."""
    from robustdeploy.export import ExportConfig, export_bundle
    from robustdeploy.parity import ParityTolerance

    config = ExportConfig(run_dir=run_dir, out=out, opset=opset, exporter=exporter, data_root=data_root,
                          tolerance=ParityTolerance(atol, rtol, min_agreement), force=force)
    bundle, parity = export_bundle(config)
    echo(parity.summary())
    echo(f"bundle -> {bundle.path}")


@app.command()
def evaluate(
    bundle: opt.BundleDir,
    runtime: opt.Runtimes = ["torch", "ort-cpu"],  # noqa: B006 (typer needs a list default)
    attack: opt.Attack = "pgd",
    eps: opt.Epsilons = [0.1],  # noqa: B006
    norm: opt.Norm = None,
    steps: opt.Steps = None,
    loss: opt.Loss = None,
    restarts: opt.Restarts = None,
    attack_opt: opt.AttackOpts = [],  # noqa: B006
    limit: opt.Limit = None,
    batch_size: opt.BatchSize = 256,
    out: opt.OutFile = None,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
    data_root: opt.DataRoot = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run written to --out.")] = False,
) -> None:
    """Craft adversarial examples on PyTorch and score them on every runtime, side by side."""
    from robustdeploy.evaluate import EvalConfig, default_out
    from robustdeploy.evaluate import evaluate as run_evaluation
    from robustdeploy.report import evaluation_table

    config = EvalConfig(bundle=bundle, runtimes=tuple(runtime), attack=attack, epsilons=tuple(eps),
                        attack_params=attack_params(norm, steps, loss, restarts, attack_opt), limit=limit,
                        batch_size=batch_size, seed=seed, device=device, data_root=data_root, out=out,
                        resume=resume)
    result = run_evaluation(config)
    echo(evaluation_table(result))
    echo(f"results -> {out or default_out_for(bundle, attack, default_out)}")


def default_out_for(bundle: Path, attack: str, default_out) -> Path:
    from robustdeploy.bundle import load_bundle

    return default_out(load_bundle(bundle), attack)


@app.command()
def quickstart(
    workdir: Annotated[Path, typer.Option(help="Folder for the quickstart's run, bundle and results.")]
    = Path("quickstart"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    eps: opt.Epsilons = [0.05, 0.1, 0.2],  # noqa: B006
    seed: opt.Seed = 0,
) -> None:
    """Train a small CNN on the built-in digits, export it, and evaluate PGD on torch and ort-cpu."""
    from robustdeploy.data import DataConfig
    from robustdeploy.evaluate import EvalConfig
    from robustdeploy.evaluate import evaluate as run_evaluation
    from robustdeploy.export import ExportConfig, export_bundle
    from robustdeploy.report import evaluation_table
    from robustdeploy.train import TrainConfig
    from robustdeploy.train import train as run_training

    start = time.perf_counter()
    run_dir, bundle_dir = workdir / "runs" / "cnn-digits", workdir / "export" / "cnn-digits"
    result_file = workdir / "results" / "cnn-digits-pgd.json"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the quickstart owns its folder and starts afresh
    record = run_training(TrainConfig(arch="cnn", data=DataConfig(seed=seed), epochs=epochs, seed=seed), run_dir)
    echo(f"1/3 trained cnn on digits: test accuracy {record.metrics['test_accuracy']:.2f}% -> {run_dir}")
    bundle, parity = export_bundle(ExportConfig(run_dir=run_dir, out=bundle_dir, force=True))
    echo(f"2/3 exported -> {bundle.path}\n    {parity.summary()}")
    result = run_evaluation(EvalConfig(bundle=bundle_dir, runtimes=("torch", "ort-cpu"), attack="pgd",
                                       epsilons=tuple(eps), seed=seed, out=result_file))
    echo(f"3/3 PGD (L-inf, 40 steps) on {result.samples} test samples:\n")
    echo(evaluation_table(result))
    echo(f"\nresults -> {result_file} (adversarial examples in {result_file.with_suffix('.adv.safetensors')})")
    echo(f"done in {time.perf_counter() - start:.1f}s")


@app.command()
def patch(
    source: opt.BundleDir,
    target_class: Annotated[int, typer.Option(help="Class the patch should make every image look like.")],
    transfer: Annotated[list[Path], typer.Option(help="Other bundles to score the patch on (repeatable).")] = [],  # noqa: B006
    patch_size: Annotated[float, typer.Option(help="Patch area as a fraction of the image, in (0, 1).")] = 0.25,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 200,
    layers: Annotated[list[str], typer.Option(help="Feature layers (module names; default all activations).")]
    = [],  # noqa: B006
    method: Annotated[str, typer.Option(help="sw (sliced-Wasserstein, seed 004) or ce (cross-entropy baseline).")]
    = "sw",
    lgs: Annotated[bool, typer.Option(help="Put Local Gradient Smoothing in front of every model.")] = False,
    seed: opt.Seed = 0,
    out: opt.OutFile = None,
) -> None:
    """Craft a universal targeted patch on SOURCE; print tSuc per model x runtime (torch, ort-cpu)."""
    from robustdeploy.attacks.ot_patch import PatchConfig
    from robustdeploy.eval_patch import PatchEvalConfig, evaluate_patch, patch_table

    config = PatchConfig(target=target_class, method=method, patch_size=patch_size, steps=steps,
                         layers=tuple(layers), seed=seed)
    result, _ = evaluate_patch(PatchEvalConfig(source, config, tuple(transfer), lgs=lgs, seed=seed, out=out))
    echo(patch_table(result))
    if out is not None:
        echo(f"results -> {out} (patch in {out.with_suffix('.patch.png')} and .patch.safetensors)")


@app.command("list")
def list_registries() -> None:
    """List the registered datasets, architectures, attacks and runtimes."""
    from robustdeploy.attacks import ATTACKS
    from robustdeploy.data import DATASETS
    from robustdeploy.models import MODELS
    from robustdeploy.runtimes import RUNTIMES

    echo("datasets:      " + ", ".join(DATASETS.names()))
    echo("architectures: " + ", ".join(MODELS.names()) + ", timm:<any timm model>")
    echo("attacks:       " + ", ".join(ATTACKS.names()))
    echo("runtimes:      " + ", ".join(RUNTIMES.names()))


def main() -> None:
    """Entry point: a user mistake is one stderr line and a non-zero exit; bugs keep their traceback."""
    try:
        app()
    except RobustDeployError as exc:
        if os.environ.get("ROBUSTDEPLOY_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted; results written so far are intact", file=sys.stderr)
        sys.exit(130)
