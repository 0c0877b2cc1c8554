"""Seed 004 transfer benchmark: does a sliced-Wasserstein universal patch transfer better than a cross-entropy one?

Trains several architectures (the built-in `cnn` and timm nets, pretrained=False) on the built-in digits upsampled
to --image-size, exports each to a bundle, then for every seed and every source model crafts an SW patch (SW_500
over the default feature layers: a timm model's stage outputs, the `cnn`'s activations) and a CE patch with the
same steps, target class, patch size, EOT over placement and scale, and TV weight, and scores each patch with
`evaluate_patch` on every model (white-box on the source, transfer on the others), torch and ort-cpu, from
stored 8-bit patched test images (each result re-scores with `robustdeploy rescore`). Prints per method the mean
± std over seeds of white-box and transfer tSuc, the paired per-seed difference SW - CE, and the
source -> target tSuc matrix; writes benchmarks/results/patch_transfer.json.

Usage: python benchmarks/patch_transfer.py [--arch cnn --arch timm:resnet10t ...] [--image-size 32] [--epochs 20]
       [--seeds 5] [--target 3] [--patch-size 0.25] [--steps 150] [--tv-weight 0.1] [--scale 0.8 1.2]
       [--limit N] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from robustdeploy.attacks.ot_patch import PatchConfig
from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig
from robustdeploy.evaluation.plans.patch import RUNTIMES, PatchEvalConfig, evaluate_patch
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.io import atomic_write_json
from robustdeploy.recipe import train
from robustdeploy.report import table
from robustdeploy.train import TrainConfig

ARCHS = ("cnn", "timm:resnet10t", "timm:mobilenetv3_small_050", "timm:convnext_atto", "timm:deit_tiny_patch16_224")
METHODS = ("sw", "ce")


@dataclass(frozen=True)
class TransferConfig:
    """The study: one patch setting (each patch sets its own method and seed), the seeds, the samples scored."""

    patch: PatchConfig = field(default_factory=lambda: PatchConfig(target=3, steps=150, batch_size=64,
                                                                   tv_weight=0.1, scale=(0.8, 1.2)))
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    limit: int | None = None


def train_models(archs: tuple[str, ...], image_size: int, epochs: int, work: Path) -> list[Path]:
    """Train and export one bundle per architecture (reused when its bundle is already in `work`)."""
    bundles = []
    for arch in archs:
        name = arch.removeprefix("timm:")
        bundle = work / f"bundle-{name}"
        if not (bundle / "manifest.json").is_file():
            train(TrainConfig(arch=arch, data=DataConfig(image_size=image_size), epochs=epochs, seed=0),
                  work / "runs" / name)
            export_bundle(ExportConfig(run_dir=work / "runs" / name, out=bundle))
        bundles.append(bundle)
    return bundles


def craft_and_score(bundles: list[Path], config: TransferConfig, work: Path,
                    after_seed=lambda rows: None) -> list[dict]:
    """One row per seed x method x source x target model x runtime: tSuc of the source's patch on the target;
    `after_seed(rows)` runs after each seed's patches (the benchmark saves there, so a cut-short run keeps them)."""
    rows = []
    for seed in config.seeds:
        for source in bundles:
            for method in METHODS:
                start = time.perf_counter()
                result, _ = evaluate_patch(PatchEvalConfig(
                    source, replace(config.patch, method=method, seed=seed), tuple(b for b in bundles if b != source),
                    limit=config.limit, seed=seed, out=work / f"{method}-{source.name}-seed{seed}.json"))
                seconds = round(time.perf_counter() - start, 1)
                src = load_bundle(source).name
                for cell in result.cells:
                    model, runtime = cell["runtime"].rsplit("/", 1)
                    rows.append({"seed": seed, "method": method, "source": src, "target": model, "runtime": runtime,
                                 "tsuc": cell["tsuc"], "clean_target_rate": cell["clean_target_rate"],
                                 "samples": cell["samples"], "seconds": seconds})
                print(f"seed {seed} {method} {src}: " + ", ".join(
                    f"{r['target']} {r['tsuc']:.1f}" for r in rows[-len(result.cells):] if r["runtime"] == "torch")
                    + f" ({seconds:.0f} s)", flush=True)
        after_seed(rows)
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> dict:
    """Per runtime: white-box / transfer tSuc per method and seed, their mean ± sd, the paired SW - CE difference
    per seed, per-pair wins, and the source -> target matrix (mean over seeds)."""
    seeds = sorted({r["seed"] for r in rows})
    models = list(dict.fromkeys(r["source"] for r in rows))
    out: dict = {"seeds": seeds, "models": models, "runtimes": {}}
    for runtime in RUNTIMES:
        cell = {(r["seed"], r["method"], r["source"], r["target"]): r["tsuc"] for r in rows if r["runtime"] == runtime}
        per_seed = {m: {kind: [statistics.fmean(cell[s, m, a, b] for a in models for b in models
                                                if (a == b) == (kind == "white_box"))
                               for s in seeds] for kind in ("white_box", "transfer")} for m in METHODS}
        diff = {kind: [sw - ce for sw, ce in zip(per_seed["sw"][kind], per_seed["ce"][kind])]
                for kind in ("white_box", "transfer")}
        pairs = [cell[s, "sw", a, b] - cell[s, "ce", a, b] for s in seeds for a in models for b in models if a != b]
        out["runtimes"][runtime] = {
            "per_seed": per_seed,
            "summary": {m: {kind: _mean_sd(v) for kind, v in k.items()} for m, k in per_seed.items()},
            "diff_per_seed": diff,
            "diff": {kind: _mean_sd(v) for kind, v in diff.items()},
            "transfer_pairs": {"sw_better": sum(d > 0 for d in pairs), "ce_better": sum(d < 0 for d in pairs),
                               "tied": sum(d == 0 for d in pairs)},
            "matrix": {m: {a: {b: statistics.fmean(cell[s, m, a, b] for s in seeds) for b in models}
                           for a in models} for m in METHODS},
        }
    torch_ort = [abs(a["tsuc"] - b["tsuc"]) for a in rows if a["runtime"] == "torch" for b in rows
                 if b["runtime"] == "ort-cpu" and (a["seed"], a["method"], a["source"], a["target"])
                 == (b["seed"], b["method"], b["source"], b["target"])]
    out["max_torch_ort_tsuc_gap"] = max(torch_ort, default=0.0)
    return out


def report(summary: dict, accuracy: dict[str, float]) -> str:
    """The tables: method summary and paired difference per runtime, then the torch source -> target matrices."""
    lines = [table(["model", "clean test acc %"], [[m, f"{accuracy[m]:.1f}"] for m in summary["models"]])]
    pm = "{:.1f} ± {:.1f}".format
    for runtime, found in summary["runtimes"].items():
        rows = [[m, pm(*found["summary"][m]["white_box"]), pm(*found["summary"][m]["transfer"]),
                 " ".join(f"{v:.1f}" for v in found["per_seed"][m]["transfer"])] for m in METHODS]
        rows.append(["sw - ce (paired)", pm(*found["diff"]["white_box"]), pm(*found["diff"]["transfer"]),
                     " ".join(f"{v:+.1f}" for v in found["diff_per_seed"]["transfer"])])
        wins = found["transfer_pairs"]
        lines += [f"\n{runtime}: tSuc % (mean ± sd over seeds {summary['seeds']}); transfer pairs SW > CE: "
                  f"{wins['sw_better']}, CE > SW: {wins['ce_better']}, tied: {wins['tied']}",
                  table(["method", "white-box tSuc", "transfer tSuc", "transfer per seed"], rows)]
    for method in METHODS:
        matrix = summary["runtimes"]["torch"]["matrix"][method]
        lines += [f"\n{method} tSuc % on torch, source (row) -> target (column), mean over seeds",
                  table(["source"] + summary["models"],
                        [[a] + [f"{matrix[a][b]:.1f}" for b in summary["models"]] for a in summary["models"]])]
    lines.append(f"\nlargest |torch - ort-cpu| tSuc gap: {summary['max_torch_ort_tsuc_gap']:.2f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help=f"architectures (default: {', '.join(ARCHS)})")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=int, default=3)
    parser.add_argument("--patch-size", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tv-weight", type=float, default=0.1)
    parser.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.2))
    parser.add_argument("--limit", type=int, help="score on the first N test samples only")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/patch_transfer"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/patch_transfer.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    patch = PatchConfig(target=args.target, patch_size=args.patch_size, steps=args.steps,
                        batch_size=args.batch_size, tv_weight=args.tv_weight, scale=tuple(args.scale))
    config = TransferConfig(patch, seeds=tuple(range(args.seeds)), limit=args.limit)
    start = time.perf_counter()
    bundles = train_models(tuple(args.arch or ARCHS), args.image_size, args.epochs, args.work)
    accuracy = {(b := load_bundle(path)).name: b.manifest["run"]["metrics"]["test_accuracy"]
                for path in bundles}
    print(f"models ready ({time.perf_counter() - start:.0f} s): {accuracy}", flush=True)

    def save(rows: list[dict]) -> None:
        atomic_write_json(args.out, {"config": asdict(config), "archs": list(args.arch or ARCHS),
                                     "image_size": args.image_size, "epochs": args.epochs, "accuracy": accuracy,
                                     "seconds": round(time.perf_counter() - start, 1), "summary": summarise(rows),
                                     "rows": rows})

    rows = craft_and_score(bundles, config, args.work, save)
    print(report(summarise(rows), accuracy), flush=True)


if __name__ == "__main__":
    main()
