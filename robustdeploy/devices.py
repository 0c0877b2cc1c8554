"""The PyTorch device of a run: checked once, the one place models are moved to it, and its numerics pinned.

On CUDA, torch's default TF32 convolutions move scores by ~1e-3 (40% of a 4-bit squeezer's threshold), so results
crafted on a GPU would not re-score on a CPU: a CUDA run computes in full fp32 and records the flags it ran with.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from robustdeploy.errors import RobustDeployError

M = TypeVar("M", bound=torch.nn.Module)


def check_device(device: str) -> None:
    """`cpu`, `cuda` or `cuda:N`, and a GPU PyTorch can see for the latter."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise RobustDeployError(f"--device must be cpu, cuda or cuda:N, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RobustDeployError(f"--device {device}: PyTorch sees no CUDA GPU; use --device cpu")


def place(model: M, device: str, train: bool = False) -> M:
    """`model` on `device`: for evaluation (default) in eval mode with frozen parameters; for training as it is.
    Every model an evaluation or a training runs goes through here (tests/test_devices.py holds every plan to it)."""
    model = model.to(device)
    return model if train else model.eval().requires_grad_(False)


def pin_numerics(device: str) -> dict:
    """Full fp32 on CUDA (TF32 off for matmuls and cuDNN convolutions); the `torch.backends` flags in force."""
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return numerics()


def numerics() -> dict:
    """The `torch.backends` flags that decide fp32 results on CUDA, as recorded in a result."""
    return {"cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
