"""`diff`: per test sample, search the 8-bit L-inf eps-ball for an input on which a deployment and the reference
(the PyTorch graph by default) predict different classes. A cascade of differential searches (gradient-guided
first where the reference has gradients, then the query-only genetic search on the samples still unsplit); every
reported disagreement is a stored example scored on both runtimes, never the search's own claim."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from robustdeploy.attacks import SEARCHES, DifferentialSearch
from robustdeploy.bundle import load_bundle
from robustdeploy.capability import Capability
from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation.checks import Check
from robustdeploy.evaluation.classify import new_result
from robustdeploy.evaluation.craft import craft_diff
from robustdeploy.evaluation.grid import OnGrid
from robustdeploy.evaluation.results import Result, save_result
from robustdeploy.evaluation.score import predictions, score_disagreement
from robustdeploy.evaluation.session import Session, SessionConfig, open_session
from robustdeploy.figures import example_figure
from robustdeploy.io import check_output
from robustdeploy.runtimes import parse_runtime
from robustdeploy.twins import make_twin

log = logging.getLogger("robustdeploy")
SEARCH_ORDER = ("gradient", "genetic")  # the default cascade, where the reference allows it


@dataclass(frozen=True)
class DiffConfig(SessionConfig):
    against: tuple[str, ...] = ("ort-cpu:int8",)
    reference: str = "torch"
    epsilons: tuple[float, ...] = (0.03,)
    searches: tuple[str, ...] = ()  # default: every search the reference's capability allows, gradient first
    budget: int = 100  # deployment queries per sample, budget and search (the clean query included)
    locate: bool = False  # also locate where in the graph each disagreement starts (plans/locate.py)
    locate_tolerance: float = 0.05  # share of a tensor's scale beyond which it departs
    out: Path | None = None


def check_diff(against: tuple[str, ...], reference: str, epsilons: tuple[float, ...], budget: int,
               searches: tuple[str, ...]) -> None:
    """Checks that need nothing opened."""
    if not against:
        raise RobustDeployError("give at least one --against deployment (e.g. --against ort-cpu:int8)")
    labels = [parse_runtime(n).label for n in against]
    if parse_runtime(reference).label in labels:
        raise RobustDeployError(f"--against {parse_runtime(reference).label} is the reference itself; compare "
                                "another runtime or variant, or set --reference")
    if not epsilons:
        raise RobustDeployError("give at least one --eps")
    for eps in epsilons:
        if not 0 < eps <= 1:
            raise RobustDeployError(f"eps {eps:g} is outside (0, 1]; give an L-inf budget in pixel units, "
                                    "e.g. 0.03")
    if budget < 1:
        raise RobustDeployError(f"the query budget must be at least 1 per sample, got {budget}")
    for name in searches:
        SEARCHES.get(name)
    if len(set(searches)) != len(searches):
        raise RobustDeployError(f"a search is listed twice: {', '.join(searches)}")


def make_searches(names: tuple[str, ...], reference: Capability, seed: int) -> list[tuple[str, DifferentialSearch]]:
    """The cascade, checked against what the reference offers."""
    names = names or tuple(n for n in SEARCH_ORDER if SEARCHES.get(n).needs <= reference)
    built = [(n, SEARCHES.create(n, seed=seed)) for n in names]
    for name, search in built:
        if search.needs > reference:
            raise RobustDeployError(f"search {name!r} needs the reference's {search.needs.name.lower()}, which it "
                                    f"does not offer; use --reference torch or --search genetic")
    return built


def run_diff(config: DiffConfig) -> Result:
    """Search every deployment at every budget; score, figure, one re-scorable result file."""
    check_diff(config.against, config.reference, config.epsilons, config.budget, config.searches)
    bundle = load_bundle(config.bundle)
    out = Path(config.out) if config.out else Path("results") / f"{bundle.name}-diff.json"
    check_output(out, "--out")
    session = open_session(replace(config, runtimes=(config.reference, *config.against)), bundle)
    result = new_result("diff", session, scorer="diff")
    stored = {"x": session.test.x, "y": session.test.y}
    diff_into(result, session, stored, config.reference, config.against, config.searches, config.epsilons,
              config.budget)
    if config.locate:
        from robustdeploy.evaluation.plans.locate import locate_into  # onnx graph surgery only when asked for

        locate_into(result, session, stored, config.locate_tolerance)
    result.figure = write_figure(out.with_suffix(".png"), result, stored, session)
    result.complete = True
    save_result(out, result, stored)
    return result


def diff_into(result: Result, session: Session, stored: dict[str, torch.Tensor], reference: str,
              against: tuple[str, ...], searches: tuple[str, ...], epsilons: tuple[float, ...], budget: int) -> None:
    """Craft the search cascade for every deployment and budget into `stored`; sets, cells and checks into
    `result`. Later searches run only on samples the earlier ones found nothing for."""
    opened = {r.label: r for r in [session.torch, *session.runtimes]}
    ref = opened[parse_runtime(reference).label]
    model = OnGrid(session.reference) if ref.label == "torch" else ref.logits
    cascade = make_searches(searches, ref.capability, session.config.seed)
    sets, claims = [], {}
    for label in (parse_runtime(n).label for n in against):
        for _, search in cascade:
            if hasattr(search, "twin"):  # DIVA: gradients of the deployment from its PyTorch twin
                twin = make_twin(session.bundle, opened[label].spec.variant, session.reference)
                search.twin = OnGrid(session.place(twin.model))
        for eps in sorted(set(epsilons)):
            todo = torch.ones(len(session.test), dtype=torch.bool)
            for stage, (name, search) in enumerate(cascade):
                crafted, claimed = craft_diff(session, stage, name, search, model, opened[label], eps, budget, todo,
                                              stored)
                sets.append(asdict(crafted))
                claims[crafted.key] = claimed.nonzero().flatten().tolist()
                todo &= ~claimed
                log.info("%s: %d samples searched in %.1f s, %s queries each on average", crafted.key,
                         crafted.attacked, crafted.seconds, crafted.queries_mean)
    result.sets, result.epsilons = sets, sorted(set(epsilons))
    result.norm = "linf"
    result.attacks = [{"label": n, "name": n, "params": s.params(), "needs": s.needs.name.lower()}
                      for n, s in cascade]
    result.extra.update({"reference": ref.label, "against": [parse_runtime(n).label for n in against],
                         "budget": budget, "claimed": claims})
    result.cells = diff_cells(result, stored, session.runners())
    result.checks.append(asdict(confirmed(result, stored, session.runners())))
    result.seconds["search"] = round(sum(s["seconds"] for s in sets), 4)


def diff_cells(result: Result, stored: dict[str, torch.Tensor], runners: dict) -> list[dict]:
    """The cells of a diff result from its stored examples: the scorer `rescore` reruns."""
    return [asdict(c) for c in score_disagreement(result.extra["against"], result.extra["reference"], result.sets,
                                                  result.epsilons, predictions(runners, stored))]


def confirmed(result: Result, stored: dict[str, torch.Tensor], runners: dict) -> Check:
    """Every disagreement a search claimed must hold when its stored 8-bit example is scored on both runtimes,
    and every stored example must lie on the 8-bit grid inside its budget."""
    labels, ref, x = predictions(runners, stored), result.extra["reference"], stored["x"]
    wrong, off = [], []
    for s in result.sets:
        index = torch.tensor(result.extra["claimed"][s["key"]], dtype=torch.long)
        split = labels(s["source"], s["key"]) != labels(ref, s["key"])
        wrong += [f"{s['key']}#{i}" for i in index[~split[index]].tolist()]
        adv = stored[s["key"]]
        steps = (adv - x) * 255
        if not torch.equal(torch.round(adv * 255) / 255, adv) or steps.abs().max() > s["eps"] * 255 + 1e-3:
            off.append(s["key"])
    passed = not wrong and not off
    return Check("disagreement_confirmed", passed,
                 "every claimed disagreement re-scores on both runtimes from its stored 8-bit example" if passed
                 else f"not confirmed on re-scoring: {', '.join(wrong[:5]) or '-'}; off the grid or budget: "
                 f"{', '.join(off) or '-'}")


def write_figure(path: Path, result: Result, stored: dict[str, torch.Tensor], session: Session) -> str | None:
    """Up to four disagreements of the first deployment at the largest budget, both runtimes' predictions."""
    runtime, eps, ref = result.extra["against"][0], max(result.epsilons), result.extra["reference"]
    labels = predictions(session.runners(), stored)
    sets = sorted((s for s in result.sets if s["source"] == runtime and s["eps"] == eps), key=lambda s: s["stage"])
    clean = labels(runtime, "x") != labels(ref, "x")
    x, adv, shown = stored["x"], stored["x"].clone(), torch.zeros(len(clean), dtype=torch.bool)
    for s in sets:
        split = (labels(runtime, s["key"]) != labels(ref, s["key"])) & ~shown & ~clean
        adv[split], shown = stored[s["key"]][split], shown | split
    index = torch.cat([shown.nonzero().flatten(), clean.nonzero().flatten()])[:4]
    if not len(index):
        return None
    preds = {name: (labels(name, "x")[index], session.runners()[name](adv[index])) for name in (ref, runtime)}
    example_figure(path, x[index], adv[index], stored["y"][index], preds,
                   f"{runtime} vs {ref}: disagreements at eps={eps:g}")
    return path.name
