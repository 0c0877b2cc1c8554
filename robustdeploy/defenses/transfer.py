"""Transfer learning (the victim of Zhu et al. 2019, ICML, and Shafahi et al. 2018, NeurIPS): a trained run's
feature extractor is frozen and only its final linear layer is re-initialised and trained on the (possibly
poisoned) training split. Not a defense; a training recipe registered beside them."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from robustdeploy import devices
from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.models.parts import head
from robustdeploy.train import fit, load_run


def _frozen_features_loss(model: nn.Module, x, y):
    model.eval()  # the frozen extractor keeps its batch-norm statistics and drops no units
    return nn.functional.cross_entropy(model(x), y)


@DEFENSES.register("transfer")
def transfer(config, data: Dataset, base: Path | None = None, **_: object) -> Trained:
    """Load `base`, freeze everything but the last linear layer, re-initialise that layer and train it."""
    if base is None:
        raise RobustDeployError("--defense transfer needs --base RUN (the run whose features are kept)")
    model, record = load_run(Path(base))
    if record.spec.input_shape != data.input_shape or record.spec.num_classes != len(data.classes):
        raise RobustDeployError(f"--base {base} was trained for {record.spec.input_shape} with "
                                f"{record.spec.num_classes} classes, not {config.data.name} {data.input_shape}")
    model.requires_grad_(False)
    last = head(model)
    last.reset_parameters()
    last.requires_grad_(True)
    model = devices.place(model, config.device, train=True)
    losses = fit(model, data, config, loss_fn=_frozen_features_loss, desc="transfer")
    model.requires_grad_(True)
    return Trained(model, record.spec, losses, {"base": str(base), "trained": "last linear layer"})
