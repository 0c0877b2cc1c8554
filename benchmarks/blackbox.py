"""Black-box strength benchmark on real MNIST: robustdeploy's HopSkipJump and Square, realised on the 8-bit grid as
`robustdeploy evaluate` runs them, against ART's and foolbox's HopSkipJump and ART's and torchattacks' Square (foolbox
3 has no Square) on the same samples at the same query budgets.

Every library's examples are projected onto the eps-ball (a minimising attack's beyond it scaled back, as foolbox's
`clipped`), rounded to the 8-bit grid inside the budget with the same `realise` and scored on the model; a peer's
queries are counted by a wrapper around the model (rows it forwards, per attacked sample). ART's and
foolbox's HopSkipJump minimise the norm with no query cap, so they run the same iterations (`--hsj-steps`) and probe
schedule (100·sqrt(t), gamma 1) as ours, and the table shows the queries each used; ours stops a sample once it is
inside eps or its next iteration could overrun `--hsj-queries`. Square: `--square-queries` for every library, p_init
0.8, margin loss. The model is the tool's CNN trained on MNIST (`--run`, e.g. `robustdeploy train --dataset mnist
--epochs 3`); the samples are the first `--samples` of the test split. One CPU thread.

Usage: python benchmarks/blackbox.py --data-root DIR --run RUN [--samples 100] [--hsj-eps 2.0] [--hsj-steps 20]
[--hsj-queries 10000] [--square-eps 0.1] [--square-queries 1000] [--out FILE]. A missing peer is skipped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from robustdeploy.attacks import ATTACKS, predict
from robustdeploy.attacks.base import project
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.evaluation.grid import LEVELS, OnGrid, grid_budget, realise
from robustdeploy.io import atomic_write_json
from robustdeploy.report import table
from robustdeploy.train import load_run


class Counted(torch.nn.Module):
    """The model in float32, counting every row it is asked about (a peer's queries)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x.float())


def ours(name: str, model, x, y, eps: float, norm: str, **params) -> tuple[torch.Tensor, float]:
    """robustdeploy as `evaluate` runs a query-based attack: 8-bit queries, realised candidates, grid budget."""
    attack = ATTACKS.create(name, norm=norm, **params)
    attack.realiser, attack.quantum = (lambda a, xb, e: realise(a, xb, e, norm)), 1 / LEVELS
    adv = attack.perturb(OnGrid(model), x, y, grid_budget(eps, norm))
    return adv, float(attack.queries_per_sample.float().mean())


def art_hsj(model, x, y, eps, norm, steps):
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    counted = Counted(model)
    clf = PyTorchClassifier(counted, torch.nn.CrossEntropyLoss(), tuple(x.shape[1:]), 10, clip_values=(0.0, 1.0))
    attack = HopSkipJump(clf, batch_size=128, norm=2 if norm == "l2" else np.inf, max_iter=steps, max_eval=10000,
                         init_eval=100, init_size=100, verbose=False)
    adv = torch.from_numpy(attack.generate(x=x.numpy(), y=y.numpy()))
    return adv, counted.rows / len(x)


def foolbox_hsj(model, x, y, eps, norm, steps):
    import foolbox as fb

    counted = Counted(model)
    attack = fb.attacks.HopSkipJumpAttack(steps=steps, initial_gradient_eval_steps=100,
                                          max_gradient_eval_steps=10000, gamma=1.0, constraint=norm)
    raw, _, _ = attack(fb.PyTorchModel(counted, bounds=(0, 1)), x, y, epsilons=[eps])
    return raw[0], counted.rows / len(x)


def art_square(model, x, y, eps, norm, queries):
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    counted = Counted(model)
    clf = PyTorchClassifier(counted, torch.nn.CrossEntropyLoss(), tuple(x.shape[1:]), 10, clip_values=(0.0, 1.0))
    attack = SquareAttack(clf, norm=2 if norm == "l2" else np.inf, max_iter=queries, eps=eps, p_init=0.8,
                          nb_restarts=1, batch_size=128, verbose=False)
    adv = torch.from_numpy(attack.generate(x=x.numpy(), y=y.numpy()))
    return adv, counted.rows / len(x)


def torchattacks_square(model, x, y, eps, norm, queries):
    import torchattacks

    counted = Counted(model)
    attack = torchattacks.Square(counted, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=queries,
                                 p_init=0.8, loss="margin", seed=0)
    return attack(x, y), counted.rows / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--hsj-eps", type=float, default=2.0)
    parser.add_argument("--hsj-steps", type=int, default=20)
    parser.add_argument("--hsj-queries", type=int, default=10000)
    parser.add_argument("--square-eps", type=float, default=0.1)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--only", choices=("hsj", "square"), default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/blackbox.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_run(args.run)
    model.eval()
    data = load_dataset(DataConfig(name="mnist", data_root=args.data_root))
    x, y = data.test.x[: args.samples], data.test.y[: args.samples]
    clean = 100.0 * float((predict(model, x) == y).float().mean())
    cases = []
    if args.only in (None, "hsj"):
        hsj = dict(max_queries=args.hsj_queries, steps=args.hsj_steps)
        cases += [("HopSkipJump", "l2", args.hsj_eps, [
            ("robustdeploy", lambda: ours("hopskipjump", model, x, y, args.hsj_eps, "l2", **hsj)),
            ("ART", lambda: art_hsj(model, x, y, args.hsj_eps, "l2", args.hsj_steps)),
            ("foolbox", lambda: foolbox_hsj(model, x, y, args.hsj_eps, "l2", args.hsj_steps))])]
    if args.only in (None, "square"):
        q, e = args.square_queries, args.square_eps
        cases += [("Square", "linf", e, [
            ("robustdeploy", lambda: ours("square", model, x, y, e, "linf", max_queries=q)),
            ("ART", lambda: art_square(model, x, y, e, "linf", q)),
            ("torchattacks", lambda: torchattacks_square(model, x, y, e, "linf", q))])]
    rows, records = [], []
    for attack, norm, eps, runs in cases:
        for library, run in runs:
            torch.manual_seed(0)
            np.random.seed(0)
            start = time.process_time()
            try:
                with torch.no_grad() if library != "foolbox" else torch.enable_grad():
                    adv, queries = run()
            except ImportError:
                continue
            seconds = time.process_time() - start
            adv = project(adv.detach().float().cpu(), x, eps, norm)  # a minimising peer's example, into the ball
            robust_float = 100.0 * float((predict(model, adv) == y).float().mean())
            realised = realise(adv, x, eps, norm)
            robust = 100.0 * float((predict(model, realised) == y).float().mean())
            records.append({"attack": attack, "norm": norm, "eps": eps, "library": library,
                            "robust_float": robust_float, "robust_realised": robust,
                            "queries_mean": round(queries, 1), "cpu_seconds": round(seconds, 1)})
            rows.append([attack, f"{norm} {eps:g}", library, f"{robust_float:.1f}", f"{robust:.1f}", f"{queries:.0f}",
                         f"{seconds:.0f}"])
            print(table(["attack", "budget", "library", "robust % (float)", "robust % (realised)", "queries/sample",
                         "CPU s"], rows[-1:]), flush=True)
    print(f"\n{args.samples} MNIST test samples, clean accuracy {clean:.1f}%")
    print(table(["attack", "budget", "library", "robust % (float)", "robust % (realised)", "queries/sample", "CPU s"],
                rows))
    atomic_write_json(args.out, {"samples": args.samples, "clean_accuracy": clean, "settings": vars(args) | {
        "run": str(args.run), "out": str(args.out)}, "rows": records})


if __name__ == "__main__":
    main()
