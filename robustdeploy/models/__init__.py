"""Model registry: seed 001's MLP/CNN variants, any timm architecture, and the normalising wrapper."""

from robustdeploy.models import purifier as _purifier  # noqa: F401  (registers conv-ae)
from robustdeploy.models import seed_nets as _seed_nets  # noqa: F401  (registers mlp*/cnn*)
from robustdeploy.models.base import (
    MODELS,
    PURIFIERS,
    Classifier,
    Composite,
    ModelSpec,
    build_classifier,
    create_net,
    load_weights,
)

__all__ = ["MODELS", "PURIFIERS", "Classifier", "Composite", "ModelSpec", "build_classifier", "create_net",
           "load_weights"]
