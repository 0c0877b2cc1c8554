"""The robustdeploy command line: a thin typer shell over the library (parse, call one function, print)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from robustdeploy import options as opt
from robustdeploy.cli_poison import poison_app
from robustdeploy.errors import RobustDeployError
from robustdeploy.thresholds import MIN_AGREEMENT

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Does my image classifier stay accurate and robust once it is deployed?",
)
app.add_typer(poison_app, name="poison")


@app.callback()
def options(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False
            ) -> None:
    """Does my image classifier stay accurate and robust once it is deployed?"""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)  # other packages: warnings
    logging.getLogger("robustdeploy").setLevel(logging.WARNING if quiet else logging.INFO)


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


def given(**options) -> dict:
    """The options the user gave (lists as tuples); the rest take the library's defaults."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if v not in (None, [])}


def attack_params(norm, steps, loss, restarts, extra: list[str]) -> dict:
    given = {"norm": norm, "steps": steps, "loss": loss, "restarts": restarts}
    return {k: v for k, v in given.items() if v is not None} | _parse_attack_opts(extra)


@app.command()
def train(
    arch: opt.Arch = "cnn",
    dataset: Annotated[str, typer.Option(help="Dataset name (see `robustdeploy list`).")] = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: opt.BatchSize = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    lr_schedule: Annotated[str | None, typer.Option(help="Learning rate per batch: constant, cosine (to 0) or step "
                                                         "(x0.1 at 1/2 and 3/4); default cosine for adv-train "
                                                         "--inner madry, else constant.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<arch>-<dataset>).")] = None,
    data_root: opt.DataRoot = None,
    download: Annotated[bool, typer.Option(help="Download a torchvision dataset into --data-root.")] = False,
    image_size: Annotated[int | None, typer.Option(help="Resize images to this size.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of training data held out for validation.")]
    = 0.15,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
    defense: Annotated[str, typer.Option(help="none, distillation, purifier, adv-train or transfer.")] = "none",
    temperature: Annotated[float | None, typer.Option(help="Distillation temperature T (default 100).")] = None,
    eps: Annotated[float | None, typer.Option(help="Adv-train L-inf budget in pixel units (required).")] = None,
    attack_steps: Annotated[int | None, typer.Option(help="Adv-train PGD steps (default 40).")] = None,
    attack_step_size: Annotated[float | None, typer.Option(help="Adv-train madry/trades: PGD step in pixel units "
                                                                "(default 2.5 * eps / steps).")] = None,
    eps_ramp: Annotated[int | None, typer.Option(help="Adv-train: epochs over which eps grows linearly from 0 "
                                                      "(default: a fifth of --epochs, at least 1, for madry; "
                                                      "else 0).")] = None,
    base: Annotated[Path | None, typer.Option(help="Purifier, transfer: reuse this trained classifier run.")]
    = None,
    train_attack: Annotated[str | None, typer.Option(help="Adv-train, --inner early-stop: the gradient attack "
                                                          "crafting the training examples (default pgd).")] = None,
    inner: Annotated[str | None, typer.Option(help="Adv-train inner maximisation: madry (default; final PGD "
                                                   "iterate), early-stop (first fooling iterate) or trades.")] = None,
    beta: Annotated[float | None, typer.Option(help="Adv-train, --inner trades: weight of the KL term "
                                                    "(default 6); purifier conv-vae: KL weight of the ELBO "
                                                    "(default 0.01).")] = None,
    purifier: Annotated[str | None, typer.Option(help="Purifier network: conv-ae (default) or conv-vae.")] = None,
    poison: Annotated[Path | None, typer.Option(help="Poison set replacing a share of the training images.")]
    = None,
    poison_rate: Annotated[float | None, typer.Option(help="Share of the poison set used, in [0, 1] (default 1).")]
    = None,
) -> None:
    """Train a classifier (optionally with a defense) and write a run folder (safetensors weights + run.json)."""
    from robustdeploy.data import DataConfig
    from robustdeploy.recipe import train as run_training
    from robustdeploy.train import TrainConfig

    data = DataConfig(name=dataset, data_root=data_root, seed=seed, val_fraction=val_fraction,
                      image_size=image_size, download=download)
    given = {"temperature": temperature, "eps": eps, "attack_steps": attack_steps, "base": base,
             "attack": train_attack, "inner": inner, "beta": beta, "purifier": purifier, "eps_ramp": eps_ramp,
             "attack_step_size": attack_step_size}
    if poison_rate is not None and poison is None:
        raise RobustDeployError("--poison-rate needs --poison POISON_SET")
    config = TrainConfig(arch=arch, data=data, epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                         seed=seed,
                         device=device, defense=defense,
                         defense_params={k: str(v) if k == "base" else v for k, v in given.items() if v is not None},
                         poison=str(poison) if poison else None, poison_rate=1.0 if poison_rate is None
                         else poison_rate)
    suffix = "" if defense == "none" else f"-{defense}"
    out = out or Path("runs") / f"{arch.replace(':', '-')}-{dataset}{suffix}"
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
    min_agreement: Annotated[float, typer.Option(help="Parity: minimum top-1 agreement, percent (check's "
                                                 "threshold).")] = MIN_AGREEMENT["fp32"],
    precision: Annotated[list[str], typer.Option(help="Variants to build: fp32, fp16, int8 (repeatable).")]
    = ["fp32"],  # noqa: B006
    calibration: Annotated[str, typer.Option(help="int8 calibration: minmax, entropy or percentile.")] = "minmax",
    calibration_samples: Annotated[int, typer.Option(help="int8 calibration samples from the train split.")] = 256,
    fp16_min_agreement: Annotated[float, typer.Option(help="Parity: fp16 minimum top-1 agreement, %.")]
    = MIN_AGREEMENT["fp16"],
    int8_min_agreement: Annotated[float, typer.Option(help="Parity: int8 minimum top-1 agreement, %.")]
    = MIN_AGREEMENT["int8"],
    data_root: opt.DataRoot = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    detector: Annotated[str | None, typer.Option(help="Add a detector graph: squeeze (feature squeezing).")]
    = None,
    squeeze_bits: Annotated[int, typer.Option(help="Squeeze: bit depth (0 = off; paper MNIST: 1).")] = 1,
    median: Annotated[int, typer.Option(help="Squeeze: k x k median filter (0 = off; paper: 2).")] = 2,
    resample: Annotated[int, typer.Option(help="Squeeze: down/up-sampling factor (0 = off).")] = 0,
    target_fpr: Annotated[float, typer.Option(help="Squeeze: false-positive rate on clean val data.")] = 0.05,
) -> None:
    """Export a run to an ONNX deployment bundle and check ONNX Runtime CPU against PyTorch."""
    from robustdeploy.defenses.squeeze import SqueezeConfig
    from robustdeploy.export import ExportConfig, export_bundle
    from robustdeploy.parity import ParityReport, ParityTolerance
    from robustdeploy.variants import VariantConfig

    tolerances = {"fp32": ParityTolerance(atol, rtol, min_agreement),
                  "fp16": ParityTolerance(None, None, fp16_min_agreement),
                  "int8": ParityTolerance(None, None, int8_min_agreement)}
    variants = VariantConfig(precisions=tuple(dict.fromkeys(precision)), calibration=calibration,
                             calibration_samples=calibration_samples, tolerances=tolerances)
    squeeze = SqueezeConfig(bits=squeeze_bits, median=median, resample=resample, target_fpr=target_fpr)
    config = ExportConfig(run_dir=run_dir, out=out, opset=opset, exporter=exporter, data_root=data_root,
                          tolerance=tolerances["fp32"], variants=variants, force=force, detector=detector,
                          squeeze=squeeze)
    bundle, _ = export_bundle(config)
    for entry in bundle.variants.values():
        echo(ParityReport.from_dict(entry["parity"]).summary())
    if "detector" in bundle.manifest:
        d = bundle.manifest["detector"]
        echo(f"detector {d['method']}: threshold {d['threshold']:.4g}, calibration FPR "
             f"{100 * d['calibration']['fpr']:.1f}% (target {100 * d['target_fpr']:.1f}%), score parity max |diff| "
             f"{d['parity']['score_max_abs']:.2e}")
    echo(f"bundle -> {bundle.path}")


import_app = typer.Typer(no_args_is_help=True, help="Bring your own model: a bundle from PyTorch weights or an ONNX "
                                                     "file, exported, parity-checked and hashed like a trained one.")
app.add_typer(import_app, name="import")
InputSize = Annotated[tuple[int, int, int], typer.Option(help="Model input C H W, e.g. 3 224 224.")]
ImportArch = Annotated[str | None, typer.Option(help="timm:NAME, tv:NAME or a built-in architecture.")]
ImportWeights = Annotated[Path | None, typer.Option(help=".safetensors, or a state dict saved with torch.save.")]
ImportOut = Annotated[Path, typer.Option(help="Bundle folder to write.")]
ImportDataset = Annotated[str, typer.Option(help="Evaluation data: imagefolder (class sub-folders of images), or "
                                                 "any dataset of `robustdeploy list`.")]
Stats = Annotated[str | None, typer.Option(help="Per-channel values, comma-separated (0.485,0.456,0.406) or "
                                                "'imagenet'.")]
Resize = Annotated[int | None, typer.Option(help="Resize the shorter side to this before the centre crop (default: "
                                                 "the input size).")]
ChannelOrder = Annotated[str, typer.Option(help="RGB or BGR.")]
ClassesFile = Annotated[Path | None, typer.Option("--classes", help="The model's class names, one a line, in output "
                                                                    "order (default: the data folder's sub-folders); "
                                                                    "the data's classes map into them by name.")]
ClassMap = Annotated[Path | None, typer.Option("--class-map", help="JSON object: the data's class names -> the model's "
                                                                   "(--classes), where they differ.")]
Precisions = Annotated[list[str], typer.Option("--precision", help="Variants to build: fp32, fp16, int8.")]
ParityLimit = Annotated[int | None, typer.Option(help="Parity on the first N test images only.")]
Force = Annotated[bool, typer.Option(help="Replace an existing bundle.")]


def _import_config(normalisation: str, input_size, mean, std, resize, channel_order, dataset, data_root, seed,
                   **rest):
    from robustdeploy.data import DataConfig
    from robustdeploy.importer import ImportConfig
    from robustdeploy.preprocess import Preprocessing, parse_stats
    from robustdeploy.variants import VariantConfig

    pre = Preprocessing(input_size, parse_stats(mean, "--mean"), parse_stats(std, "--std"), resize=resize,
                        channel_order=channel_order.upper(), normalisation=normalisation)
    precisions = rest.pop("precision")
    return ImportConfig(data=DataConfig(name=dataset, data_root=data_root, seed=seed, preprocessing=pre),
                        variants=VariantConfig(precisions=tuple(dict.fromkeys(precisions))), **rest)


def _imported(bundle) -> None:
    from robustdeploy.parity import ParityReport

    for entry in bundle.variants.values():
        echo(ParityReport.from_dict(entry["parity"]).summary())
    gradients = bundle.manifest["gradients"]
    if bundle.graph_batch:
        echo(f"the graph takes a fixed batch of {bundle.graph_batch}: its runtimes are fed {bundle.graph_batch} "
             "sample(s) a run")
    for where, section in (("deployment", bundle.manifest.get("source", {})), ("twin", gradients)):
        for rewrite in section.get("rewrites", []):
            echo(f"rewrite ({where}): {rewrite['detail']}")
    if gradients["source"] == "onnx2torch":
        echo("gradients: the ONNX graph converted by onnx2torch (its parity with ONNX Runtime above)")
    elif gradients["source"] == "none":
        echo(f"score-only bundle (black-box attacks, or --surrogate): {gradients['reason']}")
    echo(f"bundle -> {bundle.path}")


@import_app.command("torch")
def import_torch(
    arch: ImportArch = None, weights: ImportWeights = None, input_size: InputSize = ...,
    out: ImportOut = ..., dataset: ImportDataset = "imagefolder", data_root: opt.DataRoot = None, mean: Stats = None,
    std: Stats = None, resize: Resize = None, channel_order: ChannelOrder = "RGB", classes: ClassesFile = None,
    class_map: ClassMap = None,
    precision: Precisions = ["fp32"], opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,  # noqa: B006
    exporter: Annotated[str, typer.Option(help="dynamo or torchscript.")] = "dynamo",
    parity_limit: ParityLimit = None, seed: Annotated[int, typer.Option(help="Data split seed.")] = 0,
    force: Force = False,
) -> None:
    """A timm / torchvision / built-in architecture with your weights -> a bundle (normalisation inside the graph)."""
    from robustdeploy.importer import import_torch as run_import

    _imported(run_import(_import_config(
        "in-graph", input_size, mean, std, resize, channel_order, dataset, data_root, seed, out=out,
        classes_file=classes, class_map=class_map, arch=arch, weights=weights, opset=opset, exporter=exporter,
        parity_limit=parity_limit, force=force, precision=precision)))


@import_app.command("onnx")
def import_onnx(
    file: Annotated[Path, typer.Argument(help="The ONNX model that runs in production (copied unchanged).")],
    arch: ImportArch = None, weights: ImportWeights = None, input_size: InputSize = ...,
    out: ImportOut = ..., dataset: ImportDataset = "imagefolder", data_root: opt.DataRoot = None, mean: Stats = None,
    std: Stats = None, resize: Resize = None, channel_order: ChannelOrder = "RGB", classes: ClassesFile = None,
    class_map: ClassMap = None, precision: Precisions = ["fp32"], parity_limit: ParityLimit = None,  # noqa: B006
    seed: Annotated[int, typer.Option(help="Data split seed.")] = 0, force: Force = False,
) -> None:
    """An ONNX deployment -> a bundle; --mean/--std when it expects normalised input (robustdeploy normalises [0, 1]
    pixels before it, so budgets stay in pixel units). Gradients from --arch/--weights, else onnx2torch, else none."""
    from robustdeploy.importer import import_onnx as run_import

    normalisation = "outside" if mean is not None or std is not None else "in-graph"
    _imported(run_import(_import_config(
        normalisation, input_size, mean, std, resize, channel_order, dataset, data_root, seed, out=out,
        classes_file=classes, class_map=class_map, arch=arch, weights=weights, parity_limit=parity_limit, force=force,
        precision=precision), file))


@app.command()
def evaluate(
    bundle: opt.BundleDir,
    runtime: opt.Runtimes = None,
    attack: opt.Attacks = None,
    eps: opt.Epsilons = None,
    norm: opt.Norm = None,
    steps: opt.Steps = None,
    loss: opt.Loss = None,
    restarts: opt.Restarts = None,
    attack_opt: opt.AttackOpts = [],  # noqa: B006
    limit: opt.Limit = None,
    batch_size: opt.BatchSize = None,
    window: opt.Window = None,
    out: opt.OutFile = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    data_root: opt.DataRoot = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run written to --out.")] = False,
    realise: Annotated[bool, typer.Option(help="Attack and score on the 8-bit grid the deployment receives "
                                               "(--no-realise: float pixels).")] = True,
    detector: Annotated[bool, typer.Option(help="Also score the bundle's detector, oblivious and adaptive.")]
    = False,
    adaptive_steps: Annotated[int, typer.Option(help="Adaptive detector attack: steps per target and start.")]
    = 200,
    adaptive_targets: Annotated[int, typer.Option(help="Adaptive detector attack: most likely wrong classes "
                                                       "tried as targets.")] = 3,
    adaptive_restarts: Annotated[int, typer.Option(help="Adaptive detector attack: starts per target.")] = 2,
    adaptive_inner: Annotated[str, typer.Option(help="Adaptive detector attack: the gradient attack optimising "
                                                     "its objective (pgd, apgd or fgsm).")] = "pgd",
    surrogate: Annotated[Path | None, typer.Option(help="Craft gradient attacks on this bundle's PyTorch graph and "
                                                        "score them here (a transfer attack).")] = None,
    deployment_loop: Annotated[str, typer.Option(help="Also run gradient attacks with each runtime deciding success "
                                                      "(gradients from its variant's PyTorch twin): auto (where the "
                                                      "runtime's graph differs from the gradients'), all, or off "
                                                      "(plain transfer).")] = "auto",
) -> None:
    """Run an attack cascade (gradient attacks crafted on PyTorch and again in the loop of each variant,
    score/decision attacks on each runtime) and score every runtime side by side."""
    from robustdeploy.evaluation.checks import warn
    from robustdeploy.evaluation.plans.evaluate import EvalConfig
    from robustdeploy.evaluation.plans.evaluate import evaluate as run_evaluation
    from robustdeploy.report import detector_table, evaluation_table

    config = EvalConfig(bundle=bundle, attack_params=attack_params(norm, steps, loss, restarts, attack_opt),
                        resume=resume, realise=realise, deployment_loop=deployment_loop,
                        **given(runtimes=runtime, attacks=attack, epsilons=eps, limit=limit,
                                batch_size=batch_size, seed=seed, device=device, data_root=data_root, out=out,
                                surrogate=surrogate, window=window))
    if detector:
        from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack
        from robustdeploy.evaluation.plans.detector import evaluate_detector
        from robustdeploy.evaluation.shards import Group

        if Group.from_env().active:
            raise RobustDeployError("evaluate --detector is not sharded; run it without torchrun")

        adaptive = AdaptiveSqueezeAttack(inner=adaptive_inner, steps=adaptive_steps, targets=adaptive_targets,
                                         restarts=adaptive_restarts, seed=config.seed)
        echo(detector_table(evaluate_detector(config, adaptive)))
        return
    result = run_evaluation(config)
    if not result.complete:  # a torchrun rank other than 0: rank 0 writes and prints the result
        return
    echo(evaluation_table(result))
    if "surrogate" in result.extra:
        echo(f"transfer attack: gradient attacks crafted on {result.extra['surrogate']['source']} "
             f"({result.extra['surrogate']['bundle']}), scored on this bundle's runtimes")
    warn(result.checks)
    echo(f"results -> {result.path} (examples in {result.adversarial_file}, figure {result.figure})")


@app.command()
def rescore(
    result: Annotated[Path, typer.Argument(help="A result JSON written by evaluate, defend-eval, compare, check "
                                                "or patch.")],
    device: opt.Device = "cpu",
) -> None:
    """Re-score a result from its stored examples alone; exit 1 if any number differs from the stored one."""
    from robustdeploy.errors import CheckFailed
    from robustdeploy.evaluation.plans.rescore import rescore as run_rescore
    from robustdeploy.evaluation.results import cell_differences, load_result

    saved = load_result(result)[0]
    stored = saved.cells
    differ = cell_differences(stored, run_rescore(result, device))
    if differ:
        raise CheckFailed(f"{len(differ)} of {len(stored)} scored cells of {result} differ when re-scored from the "
                          f"stored examples: {'; '.join(differ)}")
    if not saved.complete:
        raise CheckFailed(f"{result} is incomplete (its run was interrupted or is still going): its {len(stored)} "
                          "scored cells re-score exactly, but it lacks the rest; finish it by rerunning the same "
                          "command with --resume, then re-score")
    echo(f"all {len(stored)} scored cells of {result} re-score exactly from its stored examples")


@app.command("defend-eval")
def defend_eval(
    bundle: opt.BundleDir,
    baseline: Annotated[Path | None, typer.Option(help="Undefended run the oblivious attack is crafted on "
                                                       "(default for a purifier: its own classifier).")] = None,
    attack: opt.Attack = None,
    eps: Annotated[float | None, typer.Option(help="L-inf budget in pixel units (default 0.1).")] = None,
    steps: Annotated[int | None, typer.Option(help="Attack steps, where the attack has steps (default 40).")]
    = None,
    runtime: opt.Runtimes = None,
    binarization: Annotated[bool, typer.Option("--binarization", help="Also run the binarization test (Zimmermann "
                                               "et al. 2022) with the adaptive cascade.")] = False,
    limit: opt.Limit = None,
    batch_size: opt.BatchSize = None,
    out: opt.OutFile = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    data_root: opt.DataRoot = None,
) -> None:
    """Score a defended bundle under oblivious and adaptive attacks, on every runtime."""
    from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
    from robustdeploy.report import defense_table

    result = evaluate_defense(DefenseEvalConfig(bundle=bundle, **given(
        baseline=baseline, attack=attack, eps=eps, steps=steps, runtimes=runtime, limit=limit, batch_size=batch_size,
        seed=seed, device=device, data_root=data_root, out=out), binarization=binarization))
    echo(defense_table(result))
    echo(f"results -> {result.path} (examples in {result.adversarial_file})")


@app.command()
def quickstart(
    workdir: Annotated[Path, typer.Option(help="Folder for the quickstart's run, bundle and results.")]
    = Path("quickstart"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    eps: opt.Epsilons = None,
    seed: opt.Seed = None,
) -> None:
    """Train a small CNN on the built-in digits, export it, and evaluate PGD on torch and ort-cpu."""
    from robustdeploy.evaluation.checks import warn
    from robustdeploy.quickstart import quickstart as run_quickstart

    warn(run_quickstart(workdir, echo=echo, **given(epochs=epochs, epsilons=eps, seed=seed)).checks)


@app.command()
def compare(
    bundle: opt.BundleDir,
    runtime: Annotated[list[str] | None, typer.Option("--runtime", "-r", help="Runtime[:variant] (default: torch "
                                                      "and every variant of the bundle on ort-cpu).")] = None,
    attack: opt.Attacks = None,
    eps: opt.Epsilons = None,
    attack_opt: opt.AttackOpts = [],  # noqa: B006
    limit: opt.Limit = None,
    batch_size: opt.BatchSize = None,
    out: Annotated[Path | None, typer.Option(help="JSON output (a .md table and a .png figure are written beside "
                                             "it).")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads of ONNX Runtime and PyTorch while timing "
                                                "latency (default 0: each library's own); recorded.")] = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    data_root: opt.DataRoot = None,
) -> None:
    """One row per runtime/variant: accuracy, agreement, robust accuracy after each attack, median latency."""
    from robustdeploy.evaluation.plans.compare import CompareConfig, compare_table
    from robustdeploy.evaluation.plans.compare import compare as run_compare

    result = run_compare(CompareConfig(bundle=bundle, attack_params=_parse_attack_opts(attack_opt), **given(
        runtimes=runtime, attacks=attack, epsilons=eps, limit=limit, batch_size=batch_size, seed=seed, device=device,
        data_root=data_root, out=out, threads=threads)))
    echo(compare_table(result))
    echo(f"results -> {result.path} and {result.path.with_suffix('.md')} (examples in {result.adversarial_file}, "
         f"figure {result.figure})")


@app.command()
def bench(
    bundle: opt.BundleDir,
    runtime: opt.Runtimes = ["torch", "ort-cpu"],  # noqa: B006
    batch_size: Annotated[list[int], typer.Option(help="Batch sizes to time (repeatable).")] = [1, 64],  # noqa: B006
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 10,
    iterations: Annotated[int, typer.Option(help="Timed runs per row.")] = 100,
    threads: Annotated[int, typer.Option(help="Intra-op threads of ONNX Runtime and PyTorch while timing (0 = "
                                              "each library's default); recorded.")] = 0,
    graph_optimization: Annotated[str, typer.Option(help="disable, basic, extended or all.")] = "all",
    out: opt.OutFile = None,
    device: opt.Device = "cpu",
) -> None:
    """Latency after warm-up: p50/p90/p99, throughput, copy time and peak memory per runtime and batch size."""
    from robustdeploy.bench import BENCH_HEADERS, BenchConfig, bench_table_rows
    from robustdeploy.bench import bench as run_bench
    from robustdeploy.report import table
    from robustdeploy.runtimes.ort import SessionOptions

    result = run_bench(BenchConfig(bundle=bundle, runtimes=tuple(runtime), batch_sizes=tuple(batch_size),
                                   warmup=warmup, iterations=iterations, out=out, device=device,
                                   session=SessionOptions(threads, 0, graph_optimization)))
    echo(table(BENCH_HEADERS, bench_table_rows(result)))
    echo(f"threads: PyTorch {result.session_options['torch_threads']}, ONNX Runtime intra-op "
         f"{threads or 'its default'}" + (f"; results -> {out}" if out else " (give --out FILE to keep them)"))


@app.command()
def diff(
    bundle: opt.BundleDir,
    against: Annotated[list[str] | None, typer.Option(help="Deployment runtime[:variant] to search for "
                                                      "disagreements (repeatable; default ort-cpu:int8).")] = None,
    reference: Annotated[str | None, typer.Option(help="Runtime the deployment should agree with (default "
                                                  "torch, the training graph).")] = None,
    eps: Annotated[list[float] | None, typer.Option("--eps", help="L-inf budget(s) in pixel units, in (0, 1] "
                                                    "(repeatable; default 0.03).")] = None,
    search: Annotated[list[str] | None, typer.Option(help="Search: gradient, genetic, diva (repeatable, a "
                                                     "cascade; `robustdeploy list`; default gradient then genetic, "
                                                     "each where the reference allows it).")] = None,
    budget: Annotated[int | None, typer.Option(help="Deployment queries per sample and search (default 100).")]
    = None,
    locate: Annotated[bool, typer.Option("--locate", help="For each disagreement, the first ONNX node whose output "
                                         "departs from the reference's, and the nodes adding most departure.")]
    = False,
    locate_tolerance: Annotated[float | None, typer.Option(help="Share of a tensor's scale beyond which it departs "
                                                           "(default 0.05).")] = None,
    limit: opt.Limit = None,
    batch_size: opt.BatchSize = None,
    out: opt.OutFile = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    data_root: opt.DataRoot = None,
) -> None:
    """Search each test sample's 8-bit eps-ball for inputs where the deployment and the reference disagree."""
    from robustdeploy.evaluation.checks import warn
    from robustdeploy.evaluation.plans.diff import DiffConfig, run_diff
    from robustdeploy.report import diff_table

    result = run_diff(DiffConfig(bundle=bundle, **given(
        against=against, reference=reference, epsilons=eps, searches=search, budget=budget, limit=limit,
        batch_size=batch_size, out=out, seed=seed, device=device, data_root=data_root,
        locate_tolerance=locate_tolerance), locate=locate))
    echo(diff_table(result))
    warn(result.checks)
    echo(f"results -> {result.path} (examples in {result.adversarial_file}, figure {result.figure})")


@app.command()
def check(
    bundle: opt.BundleDir,
    runtime: Annotated[list[str] | None, typer.Option("--runtime", "-r", help="Deployments to gate (default: "
                                                      "every variant of the bundle on ort-cpu).")] = None,
    attack: Annotated[list[str] | None, typer.Option(help="Attack cascade crafted on PyTorch fp32 (repeatable; "
                                                     "default fgsm, then 10-step pgd).")] = None,
    eps: Annotated[list[float] | None, typer.Option("--eps", help="Budget(s) of the robustness check (default "
                                                    "0.05).")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Max clean accuracy drop vs torch, points "
                                                            "(default 0.5).")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Min top-1 agreement with torch, percent (default "
                                                        "per precision, as export's: fp32 99.5, fp16 99, int8 "
                                                        "98).")] = None,
    max_robust_drop: Annotated[float | None, typer.Option(help="Max worst-case robust accuracy drop vs torch, "
                                                          "points (default 2).")] = None,
    diff_eps: Annotated[float | None, typer.Option(help="Budget of the disagreement check, a gradient-guided "
                                                   "search for inputs splitting deployment and torch (default "
                                                   "0.01).")] = None,
    diff_budget: Annotated[int | None, typer.Option(help="Its deployment queries per sample (default 2: one "
                                                    "gradient-guided walk).")] = None,
    max_disagreement: Annotated[float | None, typer.Option(help="Max share of samples split within --diff-eps, "
                                                           "percent (default 1).")] = None,
    no_diff: Annotated[bool, typer.Option("--no-diff", help="Skip the disagreement check.")] = False,
    binarization: Annotated[bool, typer.Option("--binarization", help="Also run the binarization test (Zimmermann "
                                               "et al. 2022): the cascade must fool binarised classifiers where an "
                                               "adversarial example surely exists.")] = False,
    min_binarization_success: Annotated[float | None, typer.Option(help="Its min success, percent (default "
                                                                   "95).")] = None,
    limit: opt.Limit = None,
    markdown: Annotated[Path | None, typer.Option(help="Markdown summary file.")] = Path("check-summary.md"),
    junit: Annotated[Path | None, typer.Option(help="JUnit XML file.")] = Path("check-junit.xml"),
    out: opt.OutFile = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    data_root: opt.DataRoot = None,
) -> None:
    """CI gate: exit 0 when every deployment matches the training graph within tolerance, 1 when not."""
    from robustdeploy.attacks import cascade
    from robustdeploy.errors import CheckFailed
    from robustdeploy.evaluation.plans.gate import CheckConfig, lines, run_check

    result, found = run_check(CheckConfig(bundle=bundle, markdown=markdown, junit=junit, **given(
        runtimes=runtime, attacks=cascade(tuple(attack), {}) if attack else None, epsilons=eps,
        max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, max_robust_drop=max_robust_drop,
        diff_budget=diff_budget, max_disagreement=max_disagreement, limit=limit, out=out, seed=seed, device=device,
        data_root=data_root, min_binarization_success=min_binarization_success), binarization=binarization,
        **({"diff_eps": None} if no_diff else given(diff_eps=diff_eps))))
    for line in lines(found):
        echo(line)
    if "binarization" in result.extra:
        from robustdeploy.report import binarization_table

        echo(binarization_table(result.extra["binarization"]))
    search = result.extra.get("diff_result")
    echo(f"results -> {result.path}" + (f" and {result.path.parent / search}" if search else "")
         + f" (examples in {result.adversarial_file}, figure {result.figure}), summary -> {markdown}, junit -> {junit}")
    failed = sum(not i.passed for i in found)
    if failed:
        raise CheckFailed(f"{failed} of {len(found)} checks failed (see above)")


@app.command()
def quantize(
    bundle: opt.BundleDir,
    max_robust_drop: Annotated[float | None, typer.Option(help="Max robust accuracy drop vs the fp32 graph, points "
                                                          "(default 1).")] = None,
    max_agreement_drop: Annotated[float | None, typer.Option(help="Max top-1 agreement drop vs the fp32 graph, "
                                                             "points (default 0.5).")] = None,
    eps: Annotated[float | None, typer.Option(help="Budget of the robustness measurement (default 0.1).")] = None,
    attack: opt.Attacks = None,
    steps: opt.Steps = None,
    max_fp32_nodes: Annotated[int | None, typer.Option(help="Most nodes kept fp32 (default: all).")] = None,
    variant: Annotated[str | None, typer.Option(help="Name of the chosen variant in the bundle (default "
                                                "int8-robust).")] = None,
    runtime: Annotated[str | None, typer.Option(help="ONNX Runtime provider to measure on (default ort-cpu).")]
    = None,
    limit: opt.Limit = None,
    out: opt.OutFile = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    data_root: opt.DataRoot = None,
) -> None:
    """Int8 quantisation with the most robustness-sensitive nodes kept fp32 until the bound holds."""
    from robustdeploy.errors import CheckFailed
    from robustdeploy.evaluation.plans.quantize import QuantizeConfig
    from robustdeploy.evaluation.plans.quantize import quantize as run_quantize
    from robustdeploy.report import quantize_table

    report = run_quantize(QuantizeConfig(bundle=bundle, attack_params=given(steps=steps), **given(
        max_robust_drop=max_robust_drop, max_agreement_drop=max_agreement_drop, eps=eps, attacks=attack,
        max_fp32_nodes=max_fp32_nodes, variant=variant, runtime=runtime, limit=limit, out=out, seed=seed,
        device=device, data_root=data_root)))
    echo(quantize_table(report))
    if report.chosen is None:
        raise CheckFailed(report.line())
    echo(report.line())


@app.command()
def patch(
    source: opt.BundleDir,
    target_class: Annotated[int, typer.Option(help="Class the patch should make every image look like.")],
    transfer: Annotated[list[Path], typer.Option(help="Other bundles to score the patch on (repeatable).")]
    = [],  # noqa: B006
    patch_size: Annotated[float, typer.Option(help="Patch area as a fraction of the image, in (0, 1).")] = 0.25,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 200,
    layers: Annotated[list[str], typer.Option(help="Feature layers (module names; default a timm model's stage "
                                              "outputs, else every activation).")]
    = [],  # noqa: B006
    method: Annotated[str, typer.Option(help="sw (sliced-Wasserstein, seed 004) or ce (cross-entropy baseline).")]
    = "sw",
    tv_weight: Annotated[float, typer.Option(help="Weight of the patch's total variation in the objective.")] = 0.0,
    scale: Annotated[tuple[float, float], typer.Option(help="EOT: each step rescales the patch side by a factor "
                                                       "drawn in [MIN, MAX].")] = (1.0, 1.0),
    lgs: Annotated[bool, typer.Option(help="Put Local Gradient Smoothing in front of every model.")] = False,
    limit: opt.Limit = None,
    seed: opt.Seed = 0,
    data_root: opt.DataRoot = None,
    out: opt.OutFile = None,
    device: opt.Device = "cpu",
) -> None:
    """Craft a universal targeted patch on SOURCE; print tSuc per model x runtime (torch, ort-cpu)."""
    from robustdeploy.attacks.ot_patch import PatchConfig
    from robustdeploy.evaluation.checks import warn
    from robustdeploy.evaluation.plans.patch import PatchEvalConfig, evaluate_patch
    from robustdeploy.report import patch_table

    config = PatchConfig(target=target_class, method=method, patch_size=patch_size, steps=steps,
                         layers=tuple(layers), tv_weight=tv_weight, scale=scale, seed=seed)
    result, _ = evaluate_patch(PatchEvalConfig(source, config, tuple(transfer), lgs=lgs, limit=limit, seed=seed,
                                               data_root=data_root, out=out, device=device))
    echo(patch_table(result))
    warn(result.checks)
    if out is not None:
        echo(f"results -> {out} (patch in {out.with_suffix('.patch.png')}, patched images in "
             f"{out.with_suffix('.adv.safetensors')})")


@app.command("run")
def run_suite(
    suite: Annotated[Path, typer.Argument(help="A suite file (TOML): bundles, evaluations, gate thresholds.")],
    out: Annotated[Path | None, typer.Option(help="Results folder (default: the suite's `out`, else "
                                                  "<suite>-results beside it).")] = None,
) -> None:
    """Run every evaluation of a suite on every bundle; a restart skips what is complete; exit 1 if a gate fails."""
    from robustdeploy.errors import CheckFailed
    from robustdeploy.evaluation.plans.suite import failed_gates
    from robustdeploy.evaluation.plans.suite import run_suite as run
    from robustdeploy.evaluation.shards import Group
    from robustdeploy.report import suite_table

    done = run(suite, out)
    if Group.from_env().rank != 0:  # under torchrun rank 0 reports for all
        return
    echo(suite_table(done))
    if failed_gates(done):
        raise CheckFailed(f"gate failed: {', '.join(failed_gates(done))}")


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="Result JSONs (evaluate, compare, check, detector, ...) "
                                                  "and `bench --out` files.")],
    html: Annotated[Path | None, typer.Option(help="Write one self-contained HTML page here.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the tables and warnings as Markdown here.")] = None,
) -> None:
    """One page over result files: a verdict per deployment, warnings, then curves, tables, gate and examples."""
    from robustdeploy.report_page import verdict_text, write_report

    page = write_report(results, html, markdown)
    echo(verdict_text(page))
    echo(f"report of {len(results)} results, {len(page.warnings)} warnings -> "
         + " and ".join(str(p) for p in (html, markdown) if p is not None))


@app.command("list")
def list_registries(
    long: Annotated[bool, typer.Option("--long", "-l", help="One line per entry, with what it is.")] = False,
) -> None:
    """List the registered datasets, architectures, attacks, runtimes and defenses."""
    from robustdeploy.catalog import CATALOG

    more = {"architectures": ["timm:<any timm model>", "tv:<any torchvision model>"]}
    for kind, (_, entries) in CATALOG.items():
        if long:
            echo(f"{kind}:")
            for name in sorted(entries):
                echo(f"  {name:<14} {entries[name].doc}")
            for name in more.get(kind, []):
                echo(f"  {name}")
        else:
            echo(f"{kind + ':':<15}" + ", ".join([*sorted(entries), *more.get(kind, [])]))


# Where a command's unset options take their defaults, shown in its --help (read only when help is asked for).
DEFAULTS_FROM = {"evaluate": ("robustdeploy.evaluation.plans.evaluate", "EvalConfig"),
                 "compare": ("robustdeploy.evaluation.plans.compare", "CompareConfig"),
                 "check": ("robustdeploy.evaluation.plans.gate", "CheckConfig"),
                 "diff": ("robustdeploy.evaluation.plans.diff", "DiffConfig")}
PLAIN = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": ""}
FIELDS = {"runtime": "runtimes", "attack": "attacks", "eps": "epsilons", "search": "searches"}


def literal_defaults(module: str, cls: str) -> dict:
    """The literal field defaults of dataclass `cls` and its bases (followed through `from ... import`), read from
    the modules' source without importing them: `--help` must not import torch."""
    import ast

    source = Path(__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(source.read_text())
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        return {}
    found: dict = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
            try:
                found[item.target.id] = ast.literal_eval(item.value)
            except ValueError:
                pass  # a default computed from a name: not shown
    imported = {a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
    for base in (b.id for b in node.bases if isinstance(b, ast.Name)):
        where = imported.get(base, module)
        if where.startswith("robustdeploy."):
            found = {**literal_defaults(where, base), **found}
    return found


def plain_help(command, name: str = "", show_defaults: bool = False):
    """Help in plain words (click's public API): BUNDLE, INTEGER, TEXT for metavars rather than `{bundle}`,
    `<list[str]>`, `<bool>`, and, with `show_defaults`, the library default of every option left unset."""
    config = literal_defaults(*DEFAULTS_FROM[name]) if show_defaults and name in DEFAULTS_FROM else {}
    for param in command.params:
        if param.param_type_name == "argument":
            param.metavar = param.metavar or param.name.upper()
        elif param.metavar is None:
            param.metavar = PLAIN.get(param.bare_type().removeprefix("list[").removesuffix("]"), "VALUE")
        default = config.get(FIELDS.get(param.name, param.name))
        if param.param_type_name == "option" and param.default is None and default not in (None, (), "") \
                and "default" not in (param.help or ""):
            param.show_default = ", ".join(map(str, default)) if isinstance(default, tuple) else str(default)
    shown_help = command.get_help_option(command.context_class(command))
    if shown_help is not None:
        shown_help.metavar = ""  # a flag: nothing to show after --help
    for sub_name, sub in getattr(command, "commands", {}).items():
        plain_help(sub, sub_name, show_defaults)
    return command


def main() -> None:
    """Entry point: a user mistake is one stderr line and a non-zero exit; bugs keep their traceback."""
    try:
        command = plain_help(typer.main.get_command(app), show_defaults="--help" in sys.argv)
        code = command(standalone_mode=False)  # we, not click, turn errors and Ctrl-C into messages
    except RobustDeployError as exc:
        if os.environ.get("ROBUSTDEPLOY_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # a usage mistake: unknown option, text for a number, missing argument
        ctx = getattr(exc, "ctx", None)
        if exc.format_message():  # empty when the help was printed for a bare command
            print(f"error: {exc.format_message()} (see `{ctx.command_path if ctx else 'robustdeploy'} --help`)",
                  file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code == 130:  # Ctrl-C (typer reports it as exit code 130)
        print("interrupted; results written so far are intact (continue an evaluation with --resume)",
              file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
