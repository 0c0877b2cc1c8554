"""`quantize`: int8 precision chosen against a robustness bound, as Intel Neural Compressor's accuracy-aware tuning
and NVIDIA ModelOpt's AutoQuantize choose it against clean accuracy. Candidates are ONNX Runtime static QDQ graphs
with some nodes kept fp32 (`nodes_to_exclude`); each is measured by the `evaluate` plan (robust accuracy under its
cascade, top-1 agreement with PyTorch) next to the fp32 graph. A node's sensitivity is what keeping it alone in
fp32 gives back (robust accuracy plus agreement, in points); the most sensitive are kept fp32, one more at a time,
until the bound holds. The chosen graph is written into the bundle with its measurements."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from robustdeploy.bench import BenchConfig, bench
from robustdeploy.bundle import load_bundle
from robustdeploy.data import DataConfig, load_dataset
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.classify import agreement
from robustdeploy.evaluation.craft import COMPARED
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.evaluation.session import SessionConfig
from robustdeploy.io import atomic_write_json, check_output, exclusive_outputs
from robustdeploy.variants import PRECISIONS, VariantConfig, add_variant, make_int8

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the nodes whose weights int8 quantises


@dataclass(frozen=True)
class QuantizeConfig(SessionConfig):
    max_robust_drop: float = 1.0  # points of robust accuracy the variant may lose against fp32
    max_agreement_drop: float = 0.5  # points of top-1 agreement with PyTorch it may lose against fp32
    eps: float = 0.1
    attacks: tuple[str, ...] = ("pgd",)
    attack_params: dict = field(default_factory=dict)
    runtime: str = "ort-cpu"  # the execution provider the candidates are measured and timed on
    variant: str = "int8-robust"  # the name the chosen graph gets in the bundle
    max_fp32_nodes: int | None = None  # most quantisable nodes the search may keep fp32 (default: all)
    calibration: str = "minmax"
    calibration_samples: int = 256
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.max_robust_drop < 0 or self.max_agreement_drop < 0:
            raise RobustDeployError("--max-robust-drop and --max-agreement-drop are points >= 0")
        if self.variant in PRECISIONS or not self.variant.replace("-", "").replace("_", "").isalnum():
            raise RobustDeployError(f"--variant {self.variant!r} must be a new name of letters, digits, - or _ "
                                    f"(not {', '.join(PRECISIONS)})")
        if self.max_fp32_nodes is not None and self.max_fp32_nodes < 0:
            raise RobustDeployError(f"--max-fp32-nodes must be >= 0, got {self.max_fp32_nodes}")
        if ":" in self.runtime or self.runtime == "torch":
            raise RobustDeployError(f"--runtime {self.runtime!r}: give an ONNX Runtime provider (ort-cpu, ort-cuda, "
                                    "ort-trt) without a variant")


@dataclass(frozen=True)
class Candidate:
    variant: str
    excluded: tuple[str, ...]
    clean_accuracy: float
    robust_accuracy: float
    agreement: float  # top-1 agreement with PyTorch on the clean split, percent
    robust_drop: float  # against the fp32 graph on the same runtime, points
    agreement_drop: float
    meets: bool


@dataclass
class QuantizeReport:
    bundle: str
    samples: int
    eps: float
    attacks: list[str]
    bound: dict
    fp32: dict
    candidates: list[Candidate]
    sensitivity: dict[str, float]  # node -> points given back by keeping it alone in fp32
    nodes: list[str]  # every quantisable node
    chosen: Candidate | None  # None: no candidate meets the bound
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 per batch of 64, measured side by side
    written: str | None = None  # the variant written into the bundle

    def line(self) -> str:
        if self.chosen is None:
            return (f"no int8 candidate meets the bound (robust drop <= {self.bound['max_robust_drop']:g}, agreement "
                    f"drop <= {self.bound['max_agreement_drop']:g} points) with at most {self.bound['max_fp32_nodes']} "
                    f"of {len(self.nodes)} quantisable nodes kept fp32; nothing written")
        c = self.chosen
        return (f"{self.written}: {len(c.excluded)} of {len(self.nodes)} quantisable nodes kept fp32 "
                f"({', '.join(c.excluded) or 'none'}); robust accuracy {c.robust_accuracy:.2f}% (drop "
                f"{c.robust_drop:.2f}), agreement {c.agreement:.2f}% (drop {c.agreement_drop:.2f})")


def quantisable(path: Path) -> list[str]:
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in QUANTIZABLE]


def measure(config: QuantizeConfig, work: Path, names: list[str], out: Path) -> tuple[dict, dict[str, dict], int]:
    """The fp32 graph and each named variant of `work` under the `evaluate` plan: (fp32, variant -> numbers,
    samples)."""
    runtimes = (config.runtime, *[f"{config.runtime}:{n}" for n in names])
    result = evaluate(EvalConfig(bundle=work, runtimes=("torch", *runtimes), limit=config.limit,
                                 batch_size=config.batch_size, seed=config.seed, device=config.device,
                                 data_root=config.data_root, attacks=config.attacks, epsilons=(config.eps,),
                                 attack_params=config.attack_params, out=out, deployment_loop=COMPARED))
    agree = agreement(result)
    last = {c["runtime"]: c for c in result.cells if c["eps"] == config.eps}  # the cascade's last attack
    numbers = {r: {"clean_accuracy": last[r]["clean_accuracy"], "robust_accuracy": last[r]["robust_accuracy"],
                   "agreement": agree[r]} for r in runtimes}
    return numbers[config.runtime], {n: numbers[f"{config.runtime}:{n}"] for n in names}, result.samples


def candidate(config: QuantizeConfig, fp32: dict, name: str, excluded: tuple[str, ...], m: dict) -> Candidate:
    robust_drop = round(fp32["robust_accuracy"] - m["robust_accuracy"], 4)
    agreement_drop = round(fp32["agreement"] - m["agreement"], 4)
    meets = robust_drop <= config.max_robust_drop and agreement_drop <= config.max_agreement_drop
    return Candidate(name, excluded, m["clean_accuracy"], m["robust_accuracy"], m["agreement"], robust_drop,
                     agreement_drop, meets)


@exclusive_outputs
def quantize(config: QuantizeConfig) -> QuantizeReport:
    """Search the int8 candidates in a scratch copy of the bundle; write the chosen one into the bundle."""
    bundle = load_bundle(config.bundle)
    out = Path(config.out) if config.out else Path("results") / f"{bundle.name}-quantize.json"
    check_output(out, "--out")
    nodes = quantisable(bundle.variant_path("fp32"))
    if not nodes:
        raise RobustDeployError(f"bundle {bundle.name!r}'s fp32 graph has no {'/'.join(QUANTIZABLE)} node to "
                                "quantise")
    data = bundle.data if config.data_root is None else DataConfig(**{**bundle.data.to_dict(),
                                                                       "data_root": config.data_root})
    calibration = load_dataset(data).train.x[: config.calibration_samples]
    variants = VariantConfig(("fp32", "int8"), config.calibration, config.calibration_samples)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(shutil.copytree(bundle.path, Path(tmp) / "bundle"))

        def build(name: str, excluded: tuple[str, ...]) -> None:
            graph = Path(tmp) / f"{name}.onnx"
            make_int8(bundle.variant_path("fp32"), graph, calibration, variants, bundle.manifest["input"]["name"],
                      excluded)
            add_variant(work, name, graph, {"precision": "int8", "recipe": {**variants.recipe("int8"),
                                                                            "nodes_to_exclude": list(excluded)}})

        most = len(nodes) if config.max_fp32_nodes is None else min(config.max_fp32_nodes, len(nodes))
        singles = {"q-all": ()} | ({f"q-keep{i}": (n,) for i, n in enumerate(nodes)} if most else {})
        for name, excluded in singles.items():
            build(name, excluded)
        fp32, measured, samples = measure(config, work, list(singles), Path(tmp) / "sensitivity.json")
        found = [candidate(config, fp32, n, singles[n], measured[n]) for n in singles]
        base = measured["q-all"]
        gain = {n: round(measured[f"q-keep{i}"]["robust_accuracy"] - base["robust_accuracy"]
                         + measured[f"q-keep{i}"]["agreement"] - base["agreement"], 4)
                for i, n in enumerate(nodes) if f"q-keep{i}" in measured}
        chosen = found[0] if found[0].meets else None
        if chosen is None:  # keep the most sensitive nodes fp32, one more at a time
            ranked = sorted(gain, key=lambda n: -gain[n])
            steps = {f"q-top{k}": tuple(ranked[:k]) for k in range(2, most + 1)}
            for name, excluded in steps.items():
                build(name, excluded)
            more = measure(config, work, list(steps), Path(tmp) / "search.json")[1] if steps else {}
            found += [candidate(config, fp32, n, steps[n], more[n]) for n in steps]
            meeting = [c for c in found if c.meets]
            chosen = min(meeting, key=lambda c: (len(c.excluded), -c.robust_accuracy)) if meeting else None
        report = QuantizeReport(str(bundle.path), samples, config.eps,
                                list(config.attacks), {"max_robust_drop": config.max_robust_drop,
                                                       "max_agreement_drop": config.max_agreement_drop,
                                                       "max_fp32_nodes": most},
                                fp32, found, gain, nodes, chosen)
        if chosen is not None:
            timed = bench(BenchConfig(work, tuple(dict.fromkeys((config.runtime, f"{config.runtime}:q-all",
                                                                 f"{config.runtime}:{chosen.variant}"))), (64,),
                                      warmup=5, iterations=30, seed=config.seed))
            report.latency_ms = {row.runtime: round(row.p50_ms, 4) for row in timed.rows}
            entry = {"precision": "int8", "recipe": {
                **variants.recipe("int8"), "nodes_to_exclude": list(chosen.excluded), "method":
                "robustdeploy quantize (onnxruntime.quantization.quantize_static)", "bound": report.bound,
                "measured": {**asdict(chosen), "eps": config.eps, "attacks": list(config.attacks),
                             "fp32": fp32, "latency_ms_batch64": report.latency_ms}}}
            add_variant(bundle.path, config.variant, Path(tmp) / f"{chosen.variant}.onnx", entry)
            report.written = config.variant
    atomic_write_json(out, asdict(report))
    return report
