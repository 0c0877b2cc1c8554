"""DIVA (Hong et al., "Publishing Efficient On-device Models Increases Adversarial Vulnerability", MLSys 2022,
arXiv:2212.13700): inputs that only the deployment gets wrong. PGD maximises the divergence
log p_ref(c | x) - `weight` * log p_twin(c | x) between the reference's and the deployment twin's softmax on the class
c both predict clean (the paper's difference of probabilities, in log space so a saturated softmax keeps a gradient;
`weight` 2 walks both toward the boundary, the twin faster), so the reference stays right while the deployment's
confidence falls; the deployment itself (queried on
the realised 8-bit iterate, one query per sample and step) decides success: it predicts another class while the
reference still predicts c."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robustdeploy.attacks.base import Model, project
from robustdeploy.attacks.differential import SEARCHES, DifferentialSearch, ask, labels
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError


@SEARCHES.register("diva")
@dataclass
class Diva(DifferentialSearch):
    """PGD on the DIVA objective with a random start, `steps` steps of `rel_step` * eps / steps (sign of the
    gradient), restarts while queries last; gradients of the deployment from its PyTorch twin (`twin`, set by the
    evaluation core)."""

    steps: int = 20
    rel_step: float = 2.5
    weight: float = 2.0
    needs: ClassVar[Capability] = Capability.GRADIENTS
    twin: Model | None = field(default=None, init=False, repr=False, compare=False)

    def params(self) -> dict:
        return {k: v for k, v in super().params().items() if k != "twin"}

    def _run(self, reference, deployment, x, c, eps, budget, realise, out) -> None:
        if self.twin is None:
            raise RobustDeployError("search 'diva' needs the deployment's PyTorch twin; run it through `diff`")
        generator = torch.Generator().manual_seed(self.seed)
        alpha = self.rel_step * eps / self.steps
        while True:
            active = (~out.found & (out.queries < budget)).nonzero().flatten()
            if not len(active):
                return
            xa, ca = x[active], c[active]
            noise = ((torch.rand(xa.shape, generator=generator) * 2 - 1) * eps).to(xa.device)
            current = project(xa + noise, xa, eps, "linf")
            for _ in range(self.steps):
                current = current.detach().requires_grad_(True)
                divergence = self.objective(reference(current), self.twin(current), ca)
                self.gradients += len(current)
                grad, = torch.autograd.grad(divergence.sum(), current)
                current = project(current.detach() + alpha * grad.sign(), xa, eps, "linf")
                if not self._check(reference, deployment, realise(current, xa, eps), xa, ca, active, budget, out):
                    break

    def objective(self, reference: torch.Tensor, twin: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p_ref(c) - weight * log p_twin(c), per sample: to maximise (DIVA's divergence in log space, where a
        saturated softmax still has a gradient)."""
        return reference.log_softmax(1).gather(1, c[:, None]).squeeze(1) - \
            self.weight * twin.float().log_softmax(1).gather(1, c[:, None]).squeeze(1)

    @torch.no_grad()
    def _check(self, reference, deployment, z, x, c, index, budget, out) -> bool:
        """Query the deployment on the realised iterates of the samples still searched; False once none is left."""
        keep = ~out.found[index] & (out.queries[index] < budget)
        if not keep.any():
            return False
        rows = keep.nonzero().flatten()
        z, where, cls = z[rows], index[rows], c[rows]
        split = (labels(reference, z) == cls) & (ask(deployment, z, where, out).argmax(1).to(z.device) != cls)
        out.adv[where[split]], out.found[where[split]] = z[split], True
        return True
