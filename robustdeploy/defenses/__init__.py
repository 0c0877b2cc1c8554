"""Input-transformation defenses placed in front of a classifier (torch modules made of ONNX-exportable ops)."""

from robustdeploy.registry import Registry

DEFENSES = Registry("defense")
