"""Defensive distillation (Papernot et al., IEEE S&P 2016, arXiv:1511.04508).

A teacher is trained with softmax at temperature T, a student of the same architecture is trained on the
teacher's soft labels at the same T, and the student is deployed at T = 1 (its raw logits). The paper's
MNIST setting is T = 100. Gradients of the deployed model vanish, so cross-entropy PGD stalls; the
margin loss (Carlini & Wagner 2017) does not.
"""

from __future__ import annotations

import torch
from torch import nn

from robustdeploy import devices
from robustdeploy.data import Dataset
from robustdeploy.defenses.base import DEFENSES, Trained
from robustdeploy.errors import RobustDeployError
from robustdeploy.train import accuracy, fit, new_classifier


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise RobustDeployError(f"--temperature must be positive (distillation divides logits by it), "
                                f"got {temperature:g}")


def soft_label_loss(teacher: nn.Module, temperature: float):
    """Cross-entropy of the student's softmax at T against the teacher's softmax at T."""

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = torch.softmax(teacher(x) / temperature, dim=1)
        return -(soft * torch.log_softmax(student(x) / temperature, dim=1)).sum(1).mean()

    return loss


@DEFENSES.register("distillation")
def distillation(config, data: Dataset, temperature: float = 100.0, **_: object) -> Trained:
    """Teacher at T, student on its soft labels at T, deployed at T = 1."""
    check_temperature(temperature)
    teacher, spec = new_classifier(config.arch, data)
    teacher = devices.place(teacher, config.device, train=True)
    fit(teacher, data, config, loss_fn=lambda m, x, y: nn.functional.cross_entropy(m(x) / temperature, y),
        desc="teacher")
    teacher.eval()
    student, _ = new_classifier(config.arch, data)
    student = devices.place(student, config.device, train=True)
    losses = fit(student, data, config, loss_fn=soft_label_loss(teacher, temperature), desc="student")
    info = {"temperature": temperature, "deployed_temperature": 1.0,
            "teacher_test_accuracy": accuracy(teacher, data.test, device=config.device)}
    return Trained(student, spec, losses, info)
