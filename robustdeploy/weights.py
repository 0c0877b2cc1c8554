"""A user's weights for a known architecture: safetensors or a plain state dict (torch.load(weights_only=True)),
never an arbitrary pickle; every mismatch with the architecture is one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from robustdeploy.errors import RobustDeployError
from robustdeploy.models.base import load_state

WRAPPERS = ("state_dict", "model_state_dict", "model", "module")  # common checkpoint keys around a state dict


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors file or a state dict saved with torch.save (read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise RobustDeployError(f"--weights {path} does not exist; point it at a .safetensors file or a state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise RobustDeployError(f"cannot read {path} as safetensors ({exc}); re-save it") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError):
        raise RobustDeployError(f"{path} is a pickled checkpoint, not a plain state dict (torch.load with "
                                "weights_only=True refuses the objects in it, and robustdeploy never unpickles); save "
                                "model.state_dict() with safetensors.torch.save_file or torch.save") from None
    if isinstance(state, dict):
        inner = [state[k] for k in WRAPPERS if isinstance(state.get(k), dict)]
        state = inner[0] if inner and not any(isinstance(v, torch.Tensor) for v in state.values()) else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RobustDeployError(f"{path} holds no state dict of tensors; save model.state_dict() with "
                                "safetensors.torch.save_file or torch.save")
    return state


def fit_weights(net: nn.Module, state: dict[str, torch.Tensor], arch: str) -> nn.Module:
    """Load `state` into `net` strictly (a DataParallel `module.` prefix is dropped); a missing or unexpected key or a
    shape mismatch is one line naming the first few."""
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return load_state(net, state, f"the weights for {arch}", "check --arch, --input-size and the number of classes")
