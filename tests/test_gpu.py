"""What only a GPU can show (skipped without one; `benchmarks/gpu_check.sh` runs them on a lent device): the attack
loop reads the host only at its checks, CUDA and CPU agree, ort-cuda computes in fp32 on the GPU, defend-eval's
baseline meets the device, and a detector result crafted on CUDA re-scores on a CPU."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from robustdeploy import devices
from robustdeploy.attacks import ATTACKS, predict
from robustdeploy.bench import BenchConfig, bench
from robustdeploy.bundle import load_bundle
from robustdeploy.defenses.squeeze import SqueezeConfig
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack
from robustdeploy.evaluation.grid import realise
from robustdeploy.evaluation.plans.defense import DefenseEvalConfig, evaluate_defense
from robustdeploy.evaluation.plans.detector import evaluate_detector
from robustdeploy.evaluation.plans.evaluate import EvalConfig
from robustdeploy.evaluation.plans.rescore import rescore
from robustdeploy.export import ExportConfig, export_bundle
from robustdeploy.runtimes import create_runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def ort_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def models(bundle_dir) -> dict[str, torch.nn.Module]:
    """The digits CNN on each device (a copy each: placing moves a module in place)."""
    return {device: devices.place(load_bundle(bundle_dir).reference_model(), device) for device in ("cpu", "cuda")}


def attack(model, x, y, check_every: int) -> torch.Tensor:
    """PGD-40 at L-inf 0.1 as `evaluate` runs it, on the device of `x`; examples back on the CPU."""
    pgd = ATTACKS.create("pgd", steps=40, check_every=check_every)
    pgd.realiser = lambda adv, xb, e: realise(adv, xb, e, "linf")
    return pgd.perturb(model, x, y, 0.1).cpu()


def test_the_attack_loop_synchronises_only_at_its_checks(models, digits):
    x, y = digits.test.x.cuda(), digits.test.y.cuda()
    attack(models["cuda"], x, y, 1)  # warm-up: cuDNN picks its kernels
    counts = {}
    for k in (1, 10):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                attack(models["cuda"], x, y, k)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts[k] = sum("synchroniz" in str(w.message) for w in caught)
    assert counts[10] <= 2 * (40 // 10 + 1) + 4 < counts[1], counts


def test_cuda_and_cpu_attacks_agree_on_the_realised_robust_accuracy(models, digits):
    x, y = digits.test.x, digits.test.y
    robust = {}
    for device, model in models.items():
        adv = attack(model, x.to(device), y.to(device), 1)
        robust[device] = float((predict(models["cpu"], realise(adv, x, 0.1, "linf")) == y).float().mean())
    assert abs(robust["cpu"] - robust["cuda"]) <= 0.02, robust


@pytest.mark.skipif(not torch.cuda.is_available() or not ort_cuda(), reason="needs onnxruntime-gpu")
def test_ort_cuda_runs_the_graph_on_the_gpu_in_fp32(bundle_dir, digits, tmp_path):
    bundle = load_bundle(bundle_dir)
    runtime = create_runtime(bundle, "ort-cuda", device="cuda")
    described = runtime.describe()
    options = described["provider_options"]["CUDAExecutionProvider"]
    assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "DEFAULT"
    assert described["providers"][0] == "CUDAExecutionProvider" and described["node_placement"]["CUDAExecutionProvider"]
    x = digits.test.x
    assert (runtime.predict(x) == create_runtime(bundle, "ort-cpu").predict(x)).float().mean() >= 0.99
    rows = bench(BenchConfig(bundle_dir, ("ort-cuda", "torch"), (64,), warmup=2, iterations=5, device="cuda")).rows
    assert all(r.copy_ms is not None and r.copy_ms > 0 for r in rows)
    assert rows[0].memory_source.startswith(("NVML", "unavailable")) and rows[1].memory_source.startswith("torch")


def test_defend_eval_with_a_baseline_runs_on_cuda(bundle_dir, run_dir, tmp_path):
    result = evaluate_defense(DefenseEvalConfig(bundle=bundle_dir, baseline=run_dir, runtimes=("torch",), limit=64,
                                                steps=5, device="cuda", out=tmp_path / "d.json"))
    assert result.complete and result.runtimes[0]["numerics"]["cudnn_allow_tf32"] is False


def test_a_detector_result_crafted_on_cuda_rescores_on_the_cpu(run_dir, tmp_path):
    bundle = export_bundle(ExportConfig(run_dir=run_dir, out=tmp_path / "squeeze", detector="squeeze",
                                        squeeze=SqueezeConfig(bits=4, median=0)))[0]
    config = EvalConfig(bundle=bundle.path, limit=96, device="cuda", attack_params={"steps": 10},
                        out=tmp_path / "r.json")
    result = evaluate_detector(config, AdaptiveSqueezeAttack(steps=20, targets=2, restarts=1))
    again = rescore(tmp_path / "r.json", device="cpu")
    assert len(again) == len(result.cells)
    for stored, cpu in zip(result.cells, again):
        for key, value in stored.items():
            if isinstance(value, float):
                assert math.isclose(value, cpu[key], abs_tol=1e-4), (key, value, cpu[key])
            elif key == "score_diff_vs_torch":
                assert all(abs(value[k] - cpu[key][k]) <= 1e-4 for k in value), (value, cpu[key])
            else:
                assert value == cpu[key], key
