"""Seed 000's surrogates: pretrained timm backbones from safetensors, frozen, with their own preprocessing; its
UNet++ generator, classification-head objective and fake/real detector head on the backbones' features."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from robustdeploy.data import DataConfig
from robustdeploy.errors import RobustDeployError
from robustdeploy.poison.backbones import load_backbone
from robustdeploy.poison.generate import GenerateConfig, train_generator, validate, views
from robustdeploy.poison.generator import GENERATORS
from robustdeploy.poison.objectives import mean_ce
from robustdeploy.poison.surrogates import prepare
from tests.conftest import assert_one_line_error, cli

ARCH = "timm:test_resnet"


def pretrained(path, seed: int = 0, metadata: dict | None = None):
    """A grey-image test_resnet with random (seeded) weights and a classifier head, saved as safetensors."""
    import timm

    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=10)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=metadata)
    return net.eval()


def test_weights_load_with_their_preprocessing(tmp_path):
    net = pretrained(tmp_path / "b.safetensors", metadata={"mean": "[0.25]", "std": "[0.5]", "input_size": "16"})
    backbone, made = load_backbone(ARCH, tmp_path / "b.safetensors")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = net.forward_head(net.forward_features((x - 0.25) / 0.5), pre_logits=True)
        assert torch.allclose(backbone(x), expected, atol=1e-5)
        resized = backbone(torch.rand(3, 1, 8, 8))  # the dataset's 8x8 digits go in at the backbone's 16x16
    assert resized.shape == expected.shape == (3, made["feature_dim"])
    p = made["preprocessing"]
    assert (p["channels"], p["size"], p["mean"], p["std"], p["source"]) == (1, 16, (0.25,), (0.5,), "file metadata")
    assert len(made["sha256"]) == 64 and backbone(torch.rand(2, 3, 16, 16)).shape[1] == made["feature_dim"]


def test_frozen_backbones_stay_frozen_through_generator_training(tmp_path, digits):
    for seed in (0, 1):
        pretrained(tmp_path / f"{seed}.safetensors", seed, {"input_size": "16"})
    weights = (str(tmp_path / "0.safetensors"), str(tmp_path / "1.safetensors"))
    surrogates = prepare((ARCH, ARCH), DataConfig(), digits, tmp_path, 1, 0, "cpu", weights)
    before = [{k: v.clone() for k, v in s.model.state_dict().items()} for s in surrogates]
    config = GenerateConfig(surrogates=(ARCH, ARCH), out=tmp_path / "unused", eps=0.1, epochs=2, width=4,
                            surrogate_weights=weights)
    x, y = digits.train.x[:64], digits.train.y[:64]
    generator, _, history = train_generator(surrogates, x, y, config, 10)
    for s, state in zip(surrogates, before):
        assert s.is_backbone and not s.model.training and s.model.net.training is False
        assert all(not p.requires_grad and p.grad is None for p in s.model.parameters())
        assert all(torch.equal(v, state[k]) for k, v in s.model.state_dict().items())  # BN statistics included
    assert len(history) == 2 and history[-1]["head"] > 0 and history[-1]["disc"] > 0
    with torch.no_grad():
        assert float(generator(x).abs().max()) <= 0.1


def test_the_head_misclassifies_what_the_generator_poisons(tmp_path, digits, run_dir):
    (surrogate,) = prepare((str(run_dir),), DataConfig(), digits, tmp_path, 1, 0, "cpu")
    config = GenerateConfig(surrogates=(str(run_dir),), out=tmp_path / "unused", alpha=0.0, eps=0.3, epochs=3,
                            width=4, disc_weight=0.0)
    x, y = digits.train.x[:192], digits.train.y[:192]
    generator, objective, _ = train_generator([surrogate], x, y, config, 10)
    with torch.no_grad():
        seen = views([surrogate], x, (x + generator(x)).clamp(0, 1), y)
        clean_loss = float(mean_ce(objective.heads(seen.clean_features), y))
        assert float(objective.push(seen)) > clean_loss  # the head, trained on both, does worse on poisons


def test_unet_plus_plus_is_bounded_on_odd_sizes():
    generator = GENERATORS.create("unet++", channels=3, eps=0.05, width=4)
    with torch.no_grad():
        delta = generator(torch.rand(2, 3, 11, 13) * 10)
    assert delta.shape == (2, 3, 11, 13) and 0 < float(delta.abs().max()) <= 0.05


def test_bad_weights_are_one_line(tmp_path, digits):
    pretrained(tmp_path / "b.safetensors")
    with pytest.raises(RobustDeployError, match="1 --surrogate-weights for 2 timm: surrogates"):
        prepare((ARCH, "timm:test_vit"), DataConfig(), digits, tmp_path, 1, 0, "cpu",
                (str(tmp_path / "b.safetensors"),))
    with pytest.raises(RobustDeployError, match="not timm:test_efficientnet weights|do not fit"):
        load_backbone("timm:test_efficientnet", tmp_path / "b.safetensors")
    (tmp_path / "b.pt").write_bytes(b"not a tensor file")
    with pytest.raises(RobustDeployError, match="not a .safetensors file"):
        load_backbone(ARCH, tmp_path / "b.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(RobustDeployError, match="cannot read"):
        load_backbone(ARCH, tmp_path / "bad.safetensors")
    assert_one_line_error(cli("poison", "generate", "--surrogate", ARCH, "--surrogate-weights", tmp_path / "b.pt",
                              "--objective", "predictions", "--out", tmp_path / "p"), "not a .safetensors file")
    with pytest.raises(RobustDeployError, match="unknown poison detector 'pixel'; did you mean 'pixels'"):
        validate(GenerateConfig(surrogates=("cnn",), out=tmp_path / "q", detector="pixel"))
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()
