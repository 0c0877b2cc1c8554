"""Any timm architecture by name (`timm:resnet18`), untrained, adapted to the dataset's channels and classes."""

from __future__ import annotations

import difflib

from torch import nn

from robustdeploy.errors import RobustDeployError


def create_timm(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """`timm.create_model(name, pretrained=False)`; transformers also get the dataset's image size."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f"; did you mean 'timm:{close[0]}'?" if close else ""
        raise RobustDeployError(f"unknown timm architecture {name!r}{hint} (see timm.list_models())")
    kwargs = {"pretrained": False, "in_chans": input_shape[0], "num_classes": num_classes}
    try:
        return timm.create_model(name, img_size=input_shape[1:], **kwargs)
    except TypeError:  # convolutional nets take any size and have no img_size argument
        return timm.create_model(name, **kwargs)
