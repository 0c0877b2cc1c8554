import pytest
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.models import MODELS, ModelSpec, build_classifier, create_net
from robustdeploy.recipe import train
from robustdeploy.train import TrainConfig, load_run


@pytest.mark.parametrize("arch", ["mlp", "mlp-d", "mlp-bn", "cnn", "cnn-d", "cnn-bn", "timm:resnet18"])
def test_every_architecture_maps_pixels_to_logits(arch):
    spec = ModelSpec(arch, (3, 16, 16), 7, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    model = build_classifier(spec).eval()
    assert model(torch.rand(4, 3, 16, 16)).shape == (4, 7)


def test_registry_lists_seed_variants_and_rejects_unknown_timm():
    assert {"mlp", "mlp-d", "mlp-bn", "cnn", "cnn-d", "cnn-bn"} <= set(MODELS.names())
    with pytest.raises(RobustDeployError, match="did you mean 'timm:resnet18'"):
        create_net("timm:resnet81", (3, 32, 32), 10)


def test_train_writes_a_reloadable_run(run_dir, digits):
    model, record = load_run(run_dir)
    assert (run_dir / "model.safetensors").is_file()
    assert record.spec.arch == "cnn" and record.spec.input_shape == (1, 8, 8)
    assert record.metrics["test_accuracy"] > 85.0  # a real classifier, not chance (10%)
    assert record.classes == digits.classes
    with torch.no_grad():
        acc = (model(digits.test.x).argmax(1) == digits.test.y).float().mean().item() * 100
    assert acc == pytest.approx(record.metrics["test_accuracy"])


def test_train_refuses_to_overwrite_and_bad_settings(run_dir):
    with pytest.raises(RobustDeployError, match="already exists"):
        train(TrainConfig(epochs=1), run_dir)
    with pytest.raises(RobustDeployError, match="--epochs"):
        train(TrainConfig(epochs=0), run_dir.parent / "other")
    assert not (run_dir.parent / "other").exists()
