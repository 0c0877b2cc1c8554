"""Every plan runs only models that went through `devices.place`, the one place a model meets the run's device, so a
model left behind (as defend-eval's baseline once was on a GPU: a traceback on `--device cuda`) fails here, on the
CPU, not on the first GPU run. Also: a CUDA run pins full fp32 numerics and records them."""

from __future__ import annotations

import itertools

import pytest
import torch

from robustdeploy import devices
from robustdeploy.attacks.ot_patch import PatchConfig
from robustdeploy.defenses.squeeze import SqueezeConfig
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack
from robustdeploy.evaluation.plans.compare import CompareConfig, compare
from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
from robustdeploy.evaluation.plans.detector import evaluate_detector
from robustdeploy.evaluation.plans.diff import DiffConfig, run_diff
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.plans.gate import CheckConfig, run_check
from robustdeploy.evaluation.plans.patch import PatchEvalConfig, evaluate_patch
from robustdeploy.evaluation.plans.poisoning import PoisonEvalConfig, evaluate_poison
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.poison.generate import GenerateConfig, generate
from robustdeploy.recipe import train
from robustdeploy.train import TrainConfig

FAST, LIMIT = {"steps": 2}, 8


class Placement:
    """Records the tensors of every model `devices.place` returns and every module forward whose own parameters or
    buffers it never placed."""

    def __init__(self) -> None:
        self.placed: set[int] = set()
        self.devices: set[str] = set()
        self.strays: dict[str, int] = {}

    def place(self, real):
        def spy(model, device, train=False):
            model = real(model, device, train)
            self.placed.update(id(t) for t in itertools.chain(model.parameters(), model.buffers()))
            self.devices.add(str(device))
            return model
        return spy

    def hook(self, module: torch.nn.Module, _args) -> None:
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return  # ONNX export traces a placed model with stand-in tensors of its own
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(id(t) not in self.placed for t in own):
            self.strays[type(module).__name__] = self.strays.get(type(module).__name__, 0) + 1


@pytest.fixture()
def placement(monkeypatch):
    spy = Placement()
    monkeypatch.setattr(devices, "place", spy.place(devices.place))
    handle = torch.nn.modules.module.register_module_forward_pre_hook(spy.hook)
    yield spy
    handle.remove()
    assert not spy.strays, f"modules ran without devices.place: {spy.strays}"
    assert spy.placed and spy.devices == {"cpu"}


@pytest.fixture(scope="module")
def detector_bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("devices") / "squeeze"
    return export_bundle(ExportConfig(run_dir=run_dir, out=out, detector="squeeze",
                                      squeeze=SqueezeConfig(bits=4, median=0)))[0].path


@pytest.fixture(scope="module")
def purifier_bundle(run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("devices-purifier")
    train(TrainConfig(epochs=3, defense="purifier", defense_params={"base": str(run_dir)}), root / "run")
    return export_bundle(ExportConfig(run_dir=root / "run", out=root / "bundle"))[0].path


def test_evaluate_and_its_rescore(placement, bundle_dir, tmp_path):
    evaluate(EvalConfig(bundle=bundle_dir, limit=LIMIT, epsilons=(0.1,), attacks=("pgd", "apgd"), attack_params=FAST,
                        out=tmp_path / "r.json"))
    rescore(tmp_path / "r.json")


def test_evaluate_with_a_surrogate(placement, bundle_dir, tmp_path):
    evaluate(EvalConfig(bundle=bundle_dir, limit=LIMIT, runtimes=("ort-cpu",), attack_params=FAST,
                        surrogate=bundle_dir, out=tmp_path / "r.json"))


def test_detector_and_its_rescore(placement, detector_bundle, tmp_path):
    evaluate_detector(EvalConfig(bundle=detector_bundle, limit=LIMIT, attack_params=FAST, out=tmp_path / "d.json"),
                      AdaptiveSqueezeAttack(steps=2, targets=1, restarts=1))
    rescore(tmp_path / "d.json")


def test_defend_eval_with_a_baseline_and_its_rescore(placement, bundle_dir, run_dir, tmp_path):
    evaluate_defense(DefenseEvalConfig(bundle=bundle_dir, baseline=run_dir, limit=LIMIT, steps=2,
                                       out=tmp_path / "def.json"))
    rescore(tmp_path / "def.json")


def test_defend_eval_of_a_purifier_attacks_its_classifier(placement, purifier_bundle, tmp_path):
    evaluate_defense(DefenseEvalConfig(bundle=purifier_bundle, limit=LIMIT, steps=2, out=tmp_path / "def.json"))


def test_compare_check_and_diff(placement, bundle_dir, tmp_path):
    compare(CompareConfig(bundle=bundle_dir, runtimes=("torch", "ort-cpu"), limit=LIMIT, attacks=("fgsm",),
                          latency_iterations=2, out=tmp_path / "c.json"))
    run_check(CheckConfig(bundle=bundle_dir, runtimes=("ort-cpu",), limit=LIMIT, diff_budget=2,
                          out=tmp_path / "k.json"))
    run_diff(DiffConfig(bundle=bundle_dir, against=("ort-cpu",), limit=LIMIT, budget=4, out=tmp_path / "f.json"))


def test_patch_and_its_rescore(placement, bundle_dir, tmp_path):
    evaluate_patch(PatchEvalConfig(bundle_dir, PatchConfig(target=3, method="ce", steps=2), limit=LIMIT,
                                   out=tmp_path / "p.json"))
    rescore(tmp_path / "p.json")


@pytest.fixture(scope="module")
def poisons(run_dir, tmp_path_factory):
    return generate(GenerateConfig(surrogates=(str(run_dir),), out=tmp_path_factory.mktemp("devices") / "gen",
                                   alpha=1.0, eps=0.1, epochs=1, width=4))


def test_poisoning(placement, poisons, tmp_path):
    evaluate_poison(PoisonEvalConfig(poisons, ("cnn",), (0.5,), epochs=1, out=tmp_path / "eval"))


def test_a_cuda_run_computes_in_full_fp32_and_says_so():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:  # torch's flag objects resolve these names dynamically: set and restore them by hand
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        assert devices.pin_numerics("cpu")["cudnn_allow_tf32"]  # a CPU run leaves the flags alone
        flags = devices.pin_numerics("cuda:1")
        assert not flags["cudnn_allow_tf32"] and not flags["cuda_matmul_allow_tf32"]
        assert not torch.backends.cudnn.allow_tf32 and flags == devices.numerics()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
