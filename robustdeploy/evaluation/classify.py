"""The classification pipeline every plan shares: craft a list of plans into one store (saved after each set, so a
run resumes), score every runtime, and go window by window through disk when the split exceeds the session's
window (shard by shard under torchrun); plus the masking checks and the example figure."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.evaluation import checks, shards
from robustdeploy.evaluation.craft import Crafted, CraftedSet, Plan, build, craft, describe, require_gradient_source
from robustdeploy.evaluation.results import (
    Result,
    Stored,
    adversarial_path,
    join_examples,
    load_matching,
    resume_from,
    save_result,
)
from robustdeploy.evaluation.score import predictions, score_cascade
from robustdeploy.evaluation.session import Session
from robustdeploy.figures import example_figure, pick_examples
from robustdeploy.io import check_output

log = logging.getLogger("robustdeploy")


def new_result(kind: str, session: Session, scorer: str = "classify") -> Result:
    return Result(kind=kind, scorer=scorer, **session.header())


def classify_cells(result: Result, stored: dict[str, torch.Tensor], predict: dict) -> list[dict]:
    """The cells of a classification result, per group of sets: the scorer `rescore` reruns."""
    return score_sets(result, stored["y"], predictions(predict, stored))


def score_sets(result: Result, y: torch.Tensor, labels: Callable[[str, str], torch.Tensor]) -> list[dict]:
    """`classify_cells` from per-sample labels: `labels(runtime, stored key)`."""
    cells = []
    for group in dict.fromkeys(s["group"] for s in result.sets):
        sets = [s for s in result.sets if s["group"] == group]
        cells += [asdict(c) for c in score_cascade(result.runtime_labels(), sets, result.epsilons, y, labels)]
    return cells


def on_device(session: Session, plans: list[Plan]) -> list[Plan]:
    """`plans` with their gradient sources (a baseline, a purifier's classifier, a surrogate) on the session's
    device, before the masking checks or any crafting touch them."""
    return [p if p.source_model is None else replace(p, source_model=session.place(p.source_model)) for p in plans]


def described(result: Result, session: Session, plans: list[Plan]) -> list[tuple[list, str]]:
    """The plans' attacks, built; `result` records them and their norm (what a resumed file is matched against)."""
    built = [build(p, session.config.seed, session.test.x[0].numel()) for p in plans]
    result.attacks = [a for p, (attacks, _) in zip(plans, built) for a in describe(p, attacks)]
    result.norm = built[0][1]
    return built


def run_plans(result: Result, session: Session, plans: list[Plan], out: Path, resume: bool,
              check: bool = True) -> dict[str, torch.Tensor]:
    """Craft every plan into one store, saving after each set; with `resume`, keep what `out` already has."""
    plans = on_device(session, plans)
    stored = {"x": session.test.x, "y": session.test.y}
    built = described(result, session, plans)
    check_output(out, "--out")  # once the plans are known to be sound, before anything is written
    for plan, (attacks, _) in zip(plans, built):
        require_gradient_source(session, plan, attacks)
    result.checks = masking_checks(result, session, plans[0].source_model) if check else []
    done: list = []
    if resume and Path(out).exists():
        previous, kept = resume_from(out, result)
        stored.update(kept)
        done = [CraftedSet(**s) for s in previous]
    crafted: list[Crafted] = []

    def progress(current: Crafted) -> None:  # saved first, then reported: a reported set is on disk
        result.sets = [asdict(s) for c in [*crafted, current] for s in c.sets]
        save_result(out, result, stored)
        log.info("%s: %d samples attacked in %.1f s", current.sets[-1].key, current.sets[-1].attacked,
                 current.sets[-1].seconds)

    for plan, (attacks, _) in zip(plans, built):
        crafted.append(craft(session, plan, attacks, stored, done, progress))
    result.sets = [asdict(s) for c in crafted for s in c.sets]
    result.epsilons = list(crafted[0].epsilons)
    result.extra["norms"] = {k: v for c in crafted for k, v in c.norms.items()}
    result.seconds["attack"] = round(sum(s.seconds for c in crafted for s in c.sets), 4)
    return stored


@dataclass
class Scored:
    """What `classify` leaves for the caller: the samples its checks and figure look at (the first window of a
    windowed run), their stored examples, and whether the result's examples file is written already."""

    shown: Session
    examples: Mapping[str, torch.Tensor]
    saved: bool


def classify(result: Result, session: Session, plans: list[Plan], out: Path, resume: bool,
             group: shards.Group = shards.Group()) -> Scored | None:
    """Craft `plans` into `result` and score every runtime: in one pass when the split fits in the session's
    window, else window by window through disk, memory bounded by the window (and shard by shard under
    torchrun: None on ranks other than 0). Sets are saved as they are crafted, so `resume` continues."""
    plans = on_device(session, plans)
    if not group.active and len(session.samples) <= session.window:
        stored = run_plans(result, session, plans, out, resume)
        result.cells = classify_cells(result, stored, session.runners())
        return Scored(session, stored, saved=False)
    if group.rank == 0:
        check_output(out, "--out")  # the merged result; each window has its own file
    return run_windows(result, session, plans, out, resume, group)


def finish(out: Path, result: Result, scored: Scored) -> None:
    """Write the result (and its examples, unless `classify` joined them on disk) and drop the windows."""
    save_result(out, result, None if scored.saved else scored.examples)
    shards.finish(out)


def agreement(result: Result) -> dict[str, float]:
    """Top-1 agreement (%) of each runtime's clean predictions with PyTorch's, from the result's cells."""
    return {c["runtime"]: round(100.0 * (result.samples - len(c["clean_differs_from_torch"])) / max(1, result.samples),
                                4) for c in result.cells}


def run_windows(result: Result, session: Session, plans: list[Plan], out: Path, resume: bool,
                group: shards.Group) -> Scored | None:
    """This rank's shard, window by window, each crafted, scored and saved on its own (with `resume`, a finished
    window on disk is reused and an unfinished one continued); on rank 0, every window's outcomes scored into
    `result` and their examples joined into its file; None on the other ranks."""
    if any(not p.epsilons for p in plans):
        raise RobustDeployError(f"give --eps: with more than --window {session.window} samples or under torchrun, "
                                "budgets picked from minimal norms would differ by window")
    start, stop = shards.bounds(len(session.samples), session.batch_size, group)
    parts = shards.windows(start, stop, session.window)
    done = []
    for i, (a, b) in enumerate(parts):
        done.append(run_window(session.shard(a, b), plans, out, resume, f"{i + 1} of {len(parts)}"))
        shards.release_memory()  # the window's pixels and sets are garbage once run_window returns
    windows = shards.gather(done, group)
    if windows is None:
        return None
    first = windows[0]
    result.sets, outcomes, result.extra["norms"] = shards.merge(windows)
    result.attacks, result.norm, result.epsilons = first.result.attacks, first.result.norm, first.result.epsilons
    result.seconds["attack"] = round(sum(s["seconds"] for s in result.sets), 4)
    join_examples([adversarial_path(w.path) for w in windows], out)
    shown = session.shard(first.start, first.stop)
    result.checks = masking_checks(result, shown, plans[0].source_model)
    result.cells = score_sets(result, session.samples.y, lambda runtime, key: outcomes[runtime + shards.SEP + key])
    return Scored(shown, Stored(adversarial_path(first.path)), saved=True)


def run_window(part: Session, plans: list[Plan], out: Path, resume: bool, which: str) -> shards.Window:
    """Craft, score and save one window of samples; its per-sample outcomes are written last, marking it finished."""
    start, stop = part.offset, part.offset + len(part.samples)
    path = shards.shard_path(out, start, stop)
    window = new_result("evaluate", part)
    outcomes = shards.load_outcomes(path) if resume and path.is_file() else None
    if outcomes is None:
        shards.outcomes_path(path).unlink(missing_ok=True)  # a stale one would mark this window finished
        stored = run_plans(window, part, plans, path, resume, check=False)
        outcomes = {}
        score_sets(window, stored["y"], shards.recording(predictions(part.runners(), stored), outcomes))
        save_result(path, window, stored)
        shards.save_outcomes(path, outcomes)  # last: a window with outcomes is finished
        log.info("window %s (samples %d-%d) finished -> %s", which, start, stop, path)
    else:
        described(window, part, plans)  # a finished window is matched against these settings, not an empty result
        window = load_matching(path, window)[0]
        log.info("window %s (samples %d-%d) already finished in %s", which, start, stop, path)
    return shards.Window(start, stop, path, window, outcomes)


def masking_checks(result: Result, session: Session, source: torch.nn.Module | None = None) -> list[dict]:
    """Masking signs on the gradient source (the reference unless `source`) for the attacks' own losses, logged before
    any budget is spent; a score-only bundle without a surrogate has no gradients to check."""
    losses = {a["params"].get("loss") for a in result.attacks if a["needs"] == "gradients"} - {None}
    model = source if source is not None else None if session.bundle.score_only else session.reference
    found = checks.covered_losses({loss: checks.input_gradients(model, session.test.x, session.test.y, loss,
                                                                batch_size=session.batch_size, device=session.device)
                                   for loss in sorted(losses or {"margin"}) if model is not None})
    logits = session.runtimes[0].logits(session.test.x, session.batch_size)
    found += [checks.outputs_are_logits(logits, session.bundle.manifest.get("output", {}).get("meaning", "logits")),
              checks.prediction_spread(logits.argmax(1), session.test.y, logits.shape[1], session.bundle.classes),
              checks.masking_defense(session.bundle.defense, losses)]
    for c in (c for c in found if not c.passed):
        log.warning("warning: check %s failed: %s", c.name, c.detail)
    return [asdict(c) for c in found]


def write_figure(path: Path, session: Session, stored: dict[str, torch.Tensor], result: Result) -> str | None:
    """A PNG of a few examples of the last set scored on the first runtime, predictions of every runtime; samples
    whose outcome differs from torch's at that budget come first."""
    first = session.runtimes[0].label
    sources = ("torch", first, result.extra.get("surrogate", {}).get("source"))
    sets = [s for s in result.sets if s["eps"] is not None and s["source"] in sources]
    if not sets:
        return None
    last = max(sets, key=lambda s: (s["eps"], s["stage"]))
    x, y, adv = session.test.x, session.test.y, stored[last["key"]]
    differing = sorted(set().union(*(c.get("outcome_differs_from_torch", []) for c in result.cells
                                     if c.get("eps") == last["eps"])))
    index = pick_examples(x, adv, y, session.runtimes[0].predict(adv), first=differing)
    result.extra["figure_samples"] = index.tolist()
    shown = {r.label: (r.predict(x[index]), r.predict(adv[index])) for r in session.runtimes}
    example_figure(path, x[index], adv[index], y[index], shown,
                   f"{last['attack']} {result.norm} eps={last['eps']:g}, crafted on {last['source']}"
                   + (f"; {len(differing)} differ from torch" if differing else ""))
    return path.name
