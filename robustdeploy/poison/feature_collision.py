"""Feature Collision (Shafahi, Huang, Najibi, Suciu, Studer, Dumitras and Goldstein, "Poison Frogs! Targeted
Clean-Label Poisoning Attacks on Neural Networks", NeurIPS 2018, Algorithm 1), the one-surrogate baseline.

Each poison p starts at its base b and minimises ||f(p) - f(t)||^2 / ||f(t)||^2 + beta ||p - b||^2 by
forward-backward splitting (gradient step lr, then the proximal step p = (p + lr beta b) / (1 + lr beta));
beta = 0.25 (2048 / dim b)^2 as in the paper. Here the poisons are also kept in the eps-ball of Convex Polytope,
so both methods are measured under one budget.
"""

from __future__ import annotations

import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.models.parts import penultimate
from robustdeploy.poison.methods import TARGETED, Crafted, every, project
from robustdeploy.progress import progress


@TARGETED.register("feature-collision")
def feature_collision(surrogates: list, target: torch.Tensor, bases: torch.Tensor, eps: float = 0.1,
                      iterations: int = 1000, lr: float = 0.01, beta: float | None = None) -> Crafted:
    """Poisons around `bases` whose features on the one surrogate collide with `target`'s."""
    if len(surrogates) != 1:
        raise RobustDeployError(f"feature-collision uses one surrogate, got {len(surrogates)}; give one "
                                "--surrogate or use --method convex-polytope")
    model = surrogates[0]
    beta = 0.25 * (2048 / bases[0].numel()) ** 2 if beta is None else beta
    with torch.no_grad():
        reference = penultimate(model, target)
    scale = reference.pow(2).sum().clamp_min(1e-12)
    x = bases.clone()
    history, step = [], every(iterations)
    for it, bar in progress(iterations + 1, "feature-collision", "iteration", lines=20):
        x.requires_grad_(True)
        loss = (penultimate(model, x) - reference).pow(2).sum(1).div(scale)
        if it % step == 0 or it == iterations:
            history.append({"iteration": it, "objective": round(float(loss.detach().mean()), 8)})
            bar.set_postfix_str(f"objective {float(loss.detach().mean()):.5f} at iteration {it}",
                                refresh=False)
        if it == iterations:
            continue  # the last iteration only records the objective
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x = (x - lr * grad + lr * beta * bases) / (1 + lr * beta)
            x = project(x, bases, eps)
    return Crafted(x.detach(), history, {"lr": lr, "beta": beta, "iterations": iterations, "eps": eps})
