"""`robustdeploy poison ...`: generate, craft and evaluate training-data poisons (seed 000); a thin typer shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustdeploy import options as opt

poison_app = typer.Typer(no_args_is_help=True, help="Training-data poisoning: generate, craft, evaluate.")

Surrogates = Annotated[list[str], typer.Option("--surrogate", help="Surrogate architecture (trained first), run "
                                                                   "folder, or timm:NAME with --surrogate-weights "
                                                                   "(repeatable).")]
Dataset = Annotated[str, typer.Option(help="Dataset name (see `robustdeploy list`).")]
ImageSize = Annotated[int | None, typer.Option(help="Resize images to this size.")]
Eps = Annotated[float, typer.Option(help="L-inf bound of the perturbation, pixel units.")]
SurrogateEpochs = Annotated[int, typer.Option(help="Epochs to train each surrogate architecture.")]
Out = Annotated[Path, typer.Option(help="Poison set folder to write (e.g. poisons/NAME).")]


def _data(dataset: str, data_root: str | None, image_size: int | None, seed: int):
    from robustdeploy.data import DataConfig

    return DataConfig(name=dataset, data_root=data_root, seed=seed, image_size=image_size)


@poison_app.command()
def generate(
    out: Out,
    surrogate: Surrogates,
    dataset: Dataset = "digits",
    data_root: opt.DataRoot = None,
    image_size: ImageSize = None,
    surrogate_weights: Annotated[list[Path] | None, typer.Option(
        help="Pretrained weights (.safetensors, read without unpickling) for each timm:NAME surrogate, in order; "
             "the backbone is frozen and used for its features (repeatable).")] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the L2 penalty alpha * mean(delta^2).")] = 1000.0,
    eps: Eps = 8 / 255,
    generator: Annotated[str, typer.Option(help="unet++ (the seed's) or unet.")] = "unet++",
    objective: Annotated[str, typer.Option(help="head (the seed's: a classification head on the surrogates' "
                                                "features), features or predictions.")] = "head",
    detector: Annotated[str, typer.Option(help="features-head (the seed's fake/real head on the surrogates' "
                                               "features) or pixels.")] = "features-head",
    disc_weight: Annotated[float, typer.Option(help="Weight of the detector term.")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Generator epochs.")] = 15,
    surrogate_epochs: SurrogateEpochs = 10,
    width: Annotated[int, typer.Option(help="Generator width (channels of the first level).")] = 16,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
) -> None:
    """Train a generator against frozen surrogates and write a poisoned copy of the training split."""
    from robustdeploy.poison.generate import GenerateConfig
    from robustdeploy.poison.generate import generate as run_generate

    path = run_generate(GenerateConfig(tuple(surrogate), out, _data(dataset, data_root, image_size, seed), alpha,
                                       eps, objective, disc_weight, epochs, surrogate_epochs, width=width, seed=seed,
                                       device=device, generator=generator, detector=detector,
                                       surrogate_weights=tuple(str(w) for w in surrogate_weights or ())))
    typer.echo(f"poison set -> {path} (grid {path / 'grid.png'})")


@poison_app.command()
def craft(
    out: Out,
    surrogate: Surrogates,
    target_index: Annotated[int, typer.Option(help="Test image to misclassify.")],
    poison_class: Annotated[int, typer.Option(help="Class the target should be classified as.")],
    method: Annotated[str, typer.Option(help="convex-polytope or feature-collision.")] = "convex-polytope",
    poisons: Annotated[int, typer.Option(help="Number of poisons (training images of the poison class).")] = 5,
    eps: Eps = 0.1,
    iterations: Annotated[int | None, typer.Option(help="Iterations (default: the paper's).")] = None,
    dataset: Dataset = "digits",
    data_root: opt.DataRoot = None,
    image_size: ImageSize = None,
    surrogate_epochs: SurrogateEpochs = 10,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
) -> None:
    """Craft targeted clean-label poisons (Convex Polytope, Feature Collision) and write them as a poison set."""
    from robustdeploy.poison.targeted import CraftConfig
    from robustdeploy.poison.targeted import craft as run_craft

    path = run_craft(CraftConfig(method, tuple(surrogate), target_index, poison_class, out,
                                 _data(dataset, data_root, image_size, seed), poisons, eps, iterations,
                                 surrogate_epochs=surrogate_epochs, seed=seed, device=device))
    typer.echo(f"poison set -> {path} (grid {path / 'grid.png'})")


@poison_app.command()
def evaluate(
    poison: Annotated[Path, typer.Argument(help="Poison set folder.")],
    victim: Annotated[list[str], typer.Option(help="Victim architecture (repeatable).")],
    rate: Annotated[list[float], typer.Option(help="Poison rate in [0, 1] (repeatable).")]
    = [0.0, 0.1, 0.5, 1.0],  # noqa: B006
    runtime: opt.Runtimes = None,
    epochs: Annotated[int, typer.Option(help="Victim training epochs.")] = 10,
    transfer: Annotated[bool, typer.Option(help="Victims retrain only the last layer of a trained extractor "
                                                "(the surrogate's for white-box victims).")] = False,
    out: Annotated[Path | None, typer.Option(help="Result folder (default results/poison-<set>).")] = None,
    data_root: opt.DataRoot = None,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
) -> None:
    """Train victims at each poison rate, export them, and score clean accuracy on torch and each deployment."""
    from robustdeploy.evaluation.plans.poisoning import PoisonEvalConfig, evaluate_poison, poison_table

    result = evaluate_poison(PoisonEvalConfig(poison, tuple(victim), tuple(rate),
                                              tuple(runtime or ("torch", "ort-cpu")), epochs, transfer, seed,
                                              device, data_root, out))
    typer.echo(poison_table(result))
    typer.echo(f"results -> {result['path']}/result.json, result.md, accuracy.png")
