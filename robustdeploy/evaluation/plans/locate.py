"""`diff --locate`: for each confirmed disagreement of a diff result (and each clean split), where in the graph the
deployment departs from the reference (`robustdeploy.locate`). A PyTorch reference is compared through the bundle's
fp32 ONNX graph, whose logits match PyTorch's within the bundle's parity tolerance."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

import numpy as np
import onnx
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.results import Result
from robustdeploy.evaluation.score import predictions
from robustdeploy.evaluation.session import Session
from robustdeploy.locate import Graphs, locate
from robustdeploy.runtimes import parse_runtime
from robustdeploy.runtimes.ort import PROVIDERS, open_session

MAX_LOCATED = 20  # disagreements located per deployment and budget (each is two runs of the exposed graphs)


def graphs_for(session: Session, reference: str, deployment: str) -> Graphs:
    """The two ONNX graphs of a diff: the reference's (fp32 for `torch`) and the deployment's, opened on their own
    runtimes' execution providers with the bundle's preprocessing."""
    bundle = session.bundle
    ref, dep = parse_runtime(reference), parse_runtime(deployment)
    if dep.name not in PROVIDERS or (ref.name != "torch" and ref.name not in PROVIDERS):
        raise RobustDeployError(f"--locate compares ONNX graphs; {deployment} vs {reference} is not a pair of ONNX "
                                "Runtime deployments (use ort-cpu, ort-cuda or ort-trt, and --reference torch or one)")
    ref_runtime = "ort-cpu" if ref.name == "torch" else ref.name
    normalise = bundle.preprocessing.normalise if bundle.preprocessing.normalisation == "outside" else None

    def prepare(x: torch.Tensor, onnx_session) -> np.ndarray:
        dtype = np.float16 if onnx_session.get_inputs()[0].type == "tensor(float16)" else np.float32
        return (normalise(x) if normalise else x).numpy().astype(dtype)

    return Graphs(onnx.load(str(bundle.variant_path(ref.variant))), onnx.load(str(bundle.variant_path(dep.variant))),
                  partial(open_session, runtime=ref_runtime), partial(open_session, runtime=dep.name), prepare)


def locate_into(result: Result, session: Session, stored: dict[str, torch.Tensor], tolerance: float) -> None:
    """Locate every confirmed disagreement (the first stored example splitting the two runtimes, else the clean
    input where the clean predictions already differ), up to MAX_LOCATED per deployment and budget."""
    labels, ref = predictions(session.runners(), stored), result.extra["reference"]
    found = {}
    for runtime in result.extra["against"]:
        graphs = graphs_for(session, ref, runtime)
        for eps in result.epsilons:
            clean = labels(runtime, "x") != labels(ref, "x")
            inputs, split = stored["x"].clone(), clean.clone()
            for s in sorted((s for s in result.sets if s["source"] == runtime and s["eps"] == eps),
                            key=lambda s: s["stage"]):
                new = (labels(runtime, s["key"]) != labels(ref, s["key"])) & ~split
                inputs[new], split = stored[s["key"]][new], split | new
            index = split.nonzero().flatten()[:MAX_LOCATED]
            located = locate(graphs, inputs[index], index.tolist(), tolerance)
            found[f"{runtime}/eps={eps:g}"] = [{**asdict(loc), "clean": bool(clean[loc.sample]), "line": loc.line()}
                                               for loc in located]
    result.extra["locate"] = {"tolerance": tolerance, "located": found}
