"""Model registry: seed 001's MLP/CNN variants, any timm architecture, and the normalising wrapper."""

from robustdeploy.models import seed_nets as _seed_nets  # noqa: F401  (registers mlp*/cnn*)
from robustdeploy.models.base import MODELS, Classifier, ModelSpec, build_classifier, create_net

__all__ = ["MODELS", "Classifier", "ModelSpec", "build_classifier", "create_net"]
