"""Seed 000's Table 1 on real MNIST: clean test accuracy of victims trained on 0 / 10 / 50 / 100 % poisoned
training images, on PyTorch and every deployment runtime given, with the seed's generator (UNet++), objective
(classification head on frozen surrogate features) and detector (fake/real head on the same features).

No pretrained weights can be downloaded here, so the surrogate backbones are "pretrained" by this script: each timm
architecture in --surrogates is trained on the clean training split with the ordinary recipe, its network saved as
safetensors (metadata: the dataset's mean/std and input size) and read back through `--surrogate-weights`, headless
and frozen, exactly as a user's own pretrained file would be. Victims of another family than every surrogate are the
black-box setting, victims of a surrogate's architecture (trained from scratch on the poisoned data) the white-box
one. Every number printed is measured in this run; the JSON keeps all of them with the settings.

Usage: OMP_NUM_THREADS=1 python benchmarks/poison_table.py --data-root ../shared/data/mnist [--train 2000]
       [--eps 0.3] [--alpha 1] [--gen-epochs 10] [--victim-epochs 5] [--out FILE]
(OMP_NUM_THREADS=1 on a shared, loaded CPU: with torch's default threads every step ran several times slower.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

from robustdeploy.data import DataConfig, load_dataset  # noqa: E402
from robustdeploy.evaluation.plans.poisoning import PoisonEvalConfig, evaluate_poison, poison_table  # noqa: E402
from robustdeploy.io import atomic_write_json, versions  # noqa: E402
from robustdeploy.poison.generate import GenerateConfig, generate  # noqa: E402
from robustdeploy.poison.store import load_poison_set  # noqa: E402
from robustdeploy.recipe import train  # noqa: E402
from robustdeploy.train import TrainConfig, load_run  # noqa: E402


def pretrain(arch: str, data: DataConfig, epochs: int, seed: int, work: Path) -> tuple[Path, float]:
    """A surrogate backbone trained on the clean training split, saved as a user's pretrained safetensors file."""
    run = work / f"pretrain-{arch.replace(':', '-')}"
    record = train(TrainConfig(arch=arch, data=data, epochs=epochs, seed=seed), run)
    model, _ = load_run(run)
    size = record.spec.input_shape[-1]
    metadata = {"mean": json.dumps(list(record.spec.mean)), "std": json.dumps(list(record.spec.std)),
                "input_size": json.dumps(size)}
    path = work / f"{arch.replace(':', '-')}.safetensors"
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path), metadata=metadata)
    return path, record.metrics["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train", type=int, default=2000, help="training images (the rest of the pool is test)")
    parser.add_argument("--surrogates", nargs="+", default=["timm:test_resnet", "timm:test_efficientnet"])
    parser.add_argument("--victims", nargs="+", default=["cnn", "mlp", "timm:test_resnet"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.1, 0.5, 1.0])
    parser.add_argument("--runtimes", nargs="+", default=["torch", "ort-cpu"])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--gen-epochs", type=int, default=10)
    parser.add_argument("--victim-epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator", default="unet++")
    parser.add_argument("--objective", default="head")
    parser.add_argument("--detector", default="features-head")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/poison_table/mnist.json"))
    args = parser.parse_args()

    probe = load_dataset(DataConfig(name="mnist", data_root=args.data_root))
    pool = len(probe.train) + len(probe.val) + len(probe.test)
    val = 0.05
    data = DataConfig(name="mnist", data_root=args.data_root, seed=args.seed, val_fraction=val,
                      test_fraction=round(1 - val - args.train / pool, 6))
    split = load_dataset(data)
    work = Path(tempfile.mkdtemp(prefix="poison-table-"))
    seconds = {}
    start = time.perf_counter()
    made = [pretrain(arch, data, args.pretrain_epochs, args.seed, work) for arch in args.surrogates]
    print(f"pretrained {args.surrogates}: test accuracy {[acc for _, acc in made]}", file=sys.stderr, flush=True)
    seconds["pretrain"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    config = GenerateConfig(surrogates=tuple(args.surrogates), out=work / "poisons", data=data, alpha=args.alpha,
                            eps=args.eps, epochs=args.gen_epochs, width=args.width, seed=args.seed,
                            generator=args.generator, objective=args.objective, detector=args.detector,
                            surrogate_weights=tuple(str(p) for p, _ in made))
    poisons = load_poison_set(generate(config))
    seconds["generate"] = round(time.perf_counter() - start, 1)
    print(f"poison set {poisons.path}: {poisons.manifest['history']}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = evaluate_poison(PoisonEvalConfig(poisons.path, tuple(args.victims), tuple(args.rates),
                                              tuple(args.runtimes), args.victim_epochs, seed=args.seed,
                                              data_root=args.data_root, out=work / "eval"))
    seconds["evaluate"] = round(time.perf_counter() - start, 1)
    delta = (poisons.x - split.train.x[poisons.index]).flatten(1)
    settings = {"train": len(split.train), "val": len(split.val), "test": len(split.test), "eps": args.eps,
                "alpha": args.alpha, "generator": config.generator, "objective": config.objective,
                "detector": config.detector, "disc_weight": config.disc_weight, "gen_epochs": args.gen_epochs,
                "width": args.width, "lr": config.lr, "batch_size": config.batch_size,
                "victim_epochs": args.victim_epochs, "pretrain_epochs": args.pretrain_epochs, "seed": args.seed,
                "surrogates": {a: {"weights": p.name, "pretrain_test_accuracy": acc}
                               for a, (p, acc) in zip(args.surrogates, made)},
                "linf": float(delta.abs().max()), "mean_l2": float(delta.norm(dim=1).mean()),
                "mean_delta_sq": float(delta.pow(2).mean())}
    print(json.dumps(settings, indent=1))
    print(poison_table(result, markdown=True))
    atomic_write_json(args.out, {"settings": settings, "rows": result["rows"], "history":
                                 poisons.manifest["history"], "seconds": seconds, "versions": versions()})
    print(f"-> {args.out} (work folder {work})")


if __name__ == "__main__":
    main()
