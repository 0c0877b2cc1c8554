"""Long loops report progress: off a terminal, plain lines with the rate and the time left; nothing under -q."""

import logging
import re

from robustdeploy.progress import pace, progress
from tests.conftest import cli

LINE = re.compile(r"^fgsm/torch/eps=0\.1: batch (\d)/4 \(\d\d:\d\d elapsed, [\d.]+ (batch/s|s/batch), "
                  r"\d\d:\d\d left\)$")


def test_evaluate_logs_rate_and_time_left_off_a_terminal(bundle_dir, tmp_path):
    args = ["evaluate", bundle_dir, "-r", "torch", "-r", "ort-cpu", "--attack", "fgsm", "--eps", "0.1", "--limit",
            "40", "--batch-size", "10"]
    proc = cli(*args, "--out", tmp_path / "r.json")  # stderr is a pipe here, as in a CI log
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    crafting = [int(m.group(1)) for m in map(LINE.match, lines) if m]
    assert crafting == [1, 2, 3, 4], proc.stderr  # one line per batch of the crafted set, then the set's own line
    assert any(re.match(r"fgsm/torch/eps=0\.1: \d+ samples attacked in", line) for line in lines)
    assert "\r" not in proc.stderr  # no bar redrawn in a log
    quiet = cli("-q", *args, "--out", tmp_path / "q.json")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_pace_says_rate_and_time_left():
    assert pace(3, 12, 6.0, "batch") == "00:06 elapsed, 2.00 s/batch, 00:18 left"
    assert pace(50, 100, 2.0, "run") == "00:02 elapsed, 25.00 run/s, 00:02 left"


def test_lines_off_a_terminal_repeat_the_figures_and_wait_for_slow_loops(caplog):
    caplog.set_level(logging.INFO, logger="robustdeploy")
    for _, bar in progress(4, "fit", "epoch", lines=2):
        bar.set_postfix(loss="0.5")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["fit: epoch 2/4", "fit: epoch 4/4"]
    assert caplog.records[-1].getMessage().endswith(" left): loss=0.5")
    caplog.clear()
    assert [i for i, _ in progress(3, "score", "runtime", after=60.0)] == [0, 1, 2] and not caplog.records


def test_a_single_batch_stage_reports_while_it_runs(bundle_dir, tmp_path, caplog, monkeypatch):
    """A long attack on one batch (APGD-T ran silent for 20 minutes so): heartbeat lines with the work done."""
    from robustdeploy import progress as module
    from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate

    monkeypatch.setattr(module, "HEARTBEAT", 0.01)
    caplog.set_level(logging.INFO, logger="robustdeploy")
    evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch",), attacks=("pgd",), epsilons=(0.05,), limit=16,
                        attack_params={"steps": 100, "early_stop": False}, out=tmp_path / "r.json"))
    beats = [r.getMessage() for r in caplog.records if ": running, " in r.getMessage()]
    assert beats and all(re.match(r"pgd/torch/eps=0\.05: running, \d\d:\d\d elapsed \(\d+ gradient evaluations so "
                                  r"far\)$", b) for b in beats), beats
