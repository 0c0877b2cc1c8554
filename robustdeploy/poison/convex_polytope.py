"""Convex Polytope attack (Zhu, Huang, Shafahi, Li, Taylor, Studer and Goldstein, "Transferable Clean-Label
Poisoning Attacks on Deep Neural Nets", ICML 2019, Algorithm 1).

K poisons x_j start at base images of the poison class and stay in their eps-ball; for every surrogate i, convex
coefficients c_i (on the simplex) make the poisons' features a polytope containing the target's features:

    min_{c, x}  1/m sum_i  1/2 ||phi_i(t) - sum_j c_ij phi_i(x_j)||^2 / ||phi_i(t)||^2

c takes a projected-gradient step (step 1 / ||Phi Phi^T||), x an Adam step (lr 0.04), then x is projected.
Defaults follow the paper: 4000 iterations, eps = 0.1, five poisons.
"""

from __future__ import annotations

import torch

from robustdeploy.models.parts import penultimate
from robustdeploy.poison.methods import TARGETED, Crafted, every, project
from robustdeploy.progress import progress


def simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each column of `v` (K, m) onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=0, descending=True)
    css = u.cumsum(0) - 1
    k = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device).unsqueeze(1)
    rho = ((u - css / k) > 0).float().cumsum(0).argmax(0, keepdim=True)
    theta = css.gather(0, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def polytope_loss(features: list[torch.Tensor], targets: list[torch.Tensor], coeffs: list[torch.Tensor]
                  ) -> torch.Tensor:
    """The objective above, averaged over surrogates."""
    terms = [0.5 * (t - (c * f).sum(0, keepdim=True)).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)
             for f, t, c in zip(features, targets, coeffs)]
    return torch.stack(terms).mean()


@TARGETED.register("convex-polytope")
def convex_polytope(surrogates: list, target: torch.Tensor, bases: torch.Tensor, eps: float = 0.1,
                    iterations: int = 4000, lr: float = 0.04) -> Crafted:
    """Poisons around `bases` whose features, on every surrogate, form a polytope around `target`'s."""
    with torch.no_grad():
        targets = [penultimate(m, target) for m in surrogates]
    coeffs = [torch.full((len(bases), 1), 1.0 / len(bases), device=bases.device) for _ in surrogates]
    x = bases.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    history, step = [], every(iterations)
    for it, bar in progress(iterations + 1, "convex-polytope", "iteration", lines=20):
        features = [penultimate(m, x) for m in surrogates]
        loss = polytope_loss(features, targets, coeffs)
        if it % step == 0 or it == iterations:
            history.append({"iteration": it, "objective": round(float(loss.detach()), 8)})
            bar.set_postfix_str(f"objective {float(loss.detach()):.5f} at iteration {it}", refresh=False)
        if it == iterations:
            continue  # the last iteration only records the objective
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            x.copy_(project(x, bases, eps))
            for i, (f, t) in enumerate(zip(features, targets)):
                f = f.detach()
                gram = f @ f.T
                grad = gram @ coeffs[i] - f @ t.T
                coeffs[i] = simplex(coeffs[i] - grad / torch.linalg.matrix_norm(gram, ord=2).clamp_min(1e-12))
    return Crafted(x.detach(), history, {"coefficients": [c.flatten().tolist() for c in coeffs], "lr": lr,
                                         "iterations": iterations, "eps": eps})
