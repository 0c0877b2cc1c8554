"""Any torchvision classification architecture by name (`tv:resnet18`), untrained, with the dataset's classes."""

from __future__ import annotations

import difflib

from torch import nn

from robustdeploy.errors import RobustDeployError


def create_tv(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """`torchvision.models.get_model(name, weights=None, num_classes=...)`; torchvision's nets take 3 channels."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean 'tv:{close[0]}'?" if close else ""
        raise RobustDeployError(f"unknown torchvision architecture {name!r}{hint} "
                                "(see torchvision.models.list_models())")
    if input_shape[0] != 3:
        raise RobustDeployError(f"torchvision's {name} takes 3 channels, the input has {input_shape[0]}; "
                                "use --input-size 3 H W or a timm architecture (any channel count)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
