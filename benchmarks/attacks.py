"""Time FGSM, PGD-40 (L-inf, L2) and DDN with robustdeploy and with peers (torchattacks, ART) on one model.

Usage: python benchmarks/attacks.py [--limit N] [--out FILE]. Peers are optional: a missing one is skipped.
The floor is one forward+backward pass over the same data times the number of steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from robustdeploy.attacks import ATTACKS, lp_norm, predict
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.io import atomic_write_json
from robustdeploy.report import table
from robustdeploy.train import TrainConfig, fit, new_classifier

CASES = [("fgsm", "linf", 0.1, 1), ("pgd", "linf", 0.1, 40), ("pgd", "l2", 0.8, 40), ("ddn", "l2", None, 100)]


def floor_seconds(model, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y), xr)
    return time.perf_counter() - start


def score(model, x, y, adv, eps, norm) -> float:
    """Robust accuracy (%) for a budget, median norm of the fooled samples for a minimal attack."""
    if eps is not None:
        return 100.0 * float((predict(model, adv) == y).float().mean())
    fooled = (predict(model, x) == y) & (predict(model, adv) != y)
    return float(lp_norm(adv - x, norm)[fooled].median())


def ours(name, norm, eps, x, y, model):
    attack = ATTACKS.create(name, norm=norm)
    return attack.perturb(model, x, y, eps) if eps is not None else attack.minimize(model, x, y)


def torchattacks_run(name, norm, eps, x, y, model):
    import torchattacks

    if name == "fgsm" and norm == "linf":
        attack = torchattacks.FGSM(model, eps=eps)
    elif name == "pgd":
        cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
        attack = cls(model, eps=eps, alpha=2.5 * eps / 40, steps=40, random_start=True)
    else:
        return None
    return attack(x, y)


def art_run(name, norm, eps, x, y, model):
    import numpy as np
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    if eps is None:
        return None
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
                            clip_values=(0.0, 1.0))
    p = np.inf if norm == "linf" else 2
    if name == "fgsm":
        attack = FastGradientMethod(clf, norm=p, eps=eps, batch_size=len(x))
    else:
        attack = ProjectedGradientDescent(clf, norm=p, eps=eps, eps_step=2.5 * eps / 40, max_iter=40,
                                          batch_size=len(x), verbose=False)
    return torch.from_numpy(attack.generate(x.numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attacks.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset(DataConfig())
    model, _ = new_classifier("cnn", data)
    fit(model, data, TrainConfig(epochs=8))
    model.requires_grad_(False).eval()
    x, y = data.test.x[: args.limit], data.test.y[: args.limit]
    records, rows = [], []
    for name, norm, eps, steps in CASES:
        floor = floor_seconds(model, x, y, steps)
        results = {}
        for lib, run in (("robustdeploy", ours), ("torchattacks", torchattacks_run), ("art", art_run)):
            try:
                torch.manual_seed(0)
                start = time.perf_counter()
                adv = run(name, norm, eps, x, y, model)
                seconds = time.perf_counter() - start
            except ImportError:
                continue
            if adv is not None:
                results[lib] = (seconds, score(model, x, y, adv, eps, norm))
        for lib, (seconds, value) in results.items():
            ratio = seconds / results[lib][0] if lib == "robustdeploy" else results["robustdeploy"][0] / seconds
            records.append({"attack": name, "norm": norm, "eps": eps, "library": lib, "seconds": seconds,
                            "samples_per_s": len(x) / seconds, "robust_or_median_norm": value,
                            "ratio_ours_to_peer": ratio, "floor_seconds": floor, "steps": steps})
            rows.append([f"{name}-{steps} {norm}", lib, f"{seconds:.3f}", f"{len(x) / seconds:.0f}", f"{value:.3f}",
                         f"{ratio:.2f}", f"{floor:.3f}"])
    print(table(["attack", "library", "seconds", "samples/s", "robust % | median norm", "ours/peer",
                 "floor s"], rows))
    atomic_write_json(args.out, {"samples": len(x), "threads": 1, "results": records})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
