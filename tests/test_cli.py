"""The CLI end to end in subprocesses: real commands, one-line errors, no tracebacks."""

import json

from tests.conftest import assert_one_line_error, cli


def test_train_export_evaluate_commands(tmp_path):
    run = tmp_path / "runs" / "mlp-digits"
    proc = cli("train", "--arch", "mlp", "--epochs", "3", "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert "trained mlp on digits" in proc.stdout
    assert "train: epoch 3/3 (" in proc.stderr and "loss=" in proc.stderr  # a line per epoch off a terminal
    bundle = tmp_path / "export" / "mlp-digits"
    proc = cli("export", run, "--out", bundle)
    assert proc.returncode == 0, proc.stderr
    assert "PASSED ort-cpu vs torch" in proc.stdout and "export: fp32 graph parity-checked" in proc.stderr
    out = tmp_path / "res.json"
    proc = cli("evaluate", bundle, "-r", "torch", "-r", "ort-cpu", "--attack", "fgsm", "--eps", "0.1",
               "--eps", "0.2", "--limit", "50", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "ort-cpu" in proc.stdout and "robust %" in proc.stdout
    assert json.loads(out.read_text())["epsilons"] == [0.1, 0.2]
    assert "fgsm/torch/eps=0.2: " in proc.stderr and "samples attacked in" in proc.stderr  # a line per set
    quiet = cli("-q", "evaluate", bundle, "-r", "torch", "--attack", "fgsm", "--eps", "0.1", "--limit", "20",
                "--out", tmp_path / "quiet.json")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # -q: no progress lines
    proc = cli("rescore", out)
    assert proc.returncode == 0 and "re-score exactly" in proc.stdout, proc.stderr
    tampered = json.loads(out.read_text())
    tampered["cells"][0]["robust_accuracy"] += 1.0
    out.write_text(json.dumps(tampered))
    assert_one_line_error(cli("rescore", out), "differ when re-scored")
    tampered["cells"][0]["robust_accuracy"] -= 1.0
    tampered["complete"] = False  # as a run interrupted (or still going) leaves it
    out.write_text(json.dumps(tampered))
    assert_one_line_error(cli("rescore", out), "is incomplete", "--resume")
    assert_one_line_error(cli("rescore", tmp_path / "none.json"), "not found")


def test_user_mistakes_are_one_line(bundle_dir, tmp_path):
    assert_one_line_error(cli("evaluate", tmp_path / "missing"), "not found")
    assert_one_line_error(cli("evaluate", bundle_dir, "--runtime", "ort-cuda"), "ort-cuda", "not available")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "pgdd"), "did you mean 'pgd'")
    assert_one_line_error(cli("evaluate", bundle_dir, "--eps", "1.5"), "outside")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack-opt", "steps=many"), "steps")
    assert_one_line_error(cli("evaluate", bundle_dir, "--batch-size", "0", "--attack", "ddn"), "--batch-size")
    assert_one_line_error(cli("evaluate", bundle_dir, "--out", tmp_path), "is a folder")
    assert_one_line_error(cli("evaluate", bundle_dir, "--attack", "ddn", "--attack", "pgd"), "share a norm")
    assert_one_line_error(cli("train", "--dataset", "mnsit", "--out", tmp_path / "r"), "mnist")
    assert_one_line_error(cli("train", "--arch", "cnnn", "--out", tmp_path / "r"), "did you mean 'cnn'")
    assert_one_line_error(cli("export", tmp_path), "not a run folder")
    assert not (tmp_path / "r").exists()


def test_usage_mistakes_are_one_line_too(bundle_dir):
    assert_one_line_error(cli("evaluate", bundle_dir, "--limit", "abc"), "--limit", "integer", "--help")
    assert_one_line_error(cli("evaluate", bundle_dir, "--nope"), "No such option")
    assert_one_line_error(cli("evaluate"), "Missing argument")


def test_ctrl_c_keeps_finished_sets_and_resume_completes(bundle_dir, tmp_path):
    """Interrupted after its first crafted set, a run says so in one line; --resume finishes it from disk."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "robustdeploy", "evaluate", bundle_dir, "-r", "ort-cpu", "--attack", "pgd",
            "--attack", "square", "--attack-opt", "max_queries=300", "--eps", "0.1", "--limit", "60",
            "--out", out]
    # a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: reset it
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()  # the progress line of the first crafted set
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert first.startswith("pgd/torch/eps=0.1: ") and proc.returncode == 130
    assert rest.strip().splitlines()[-1].startswith("interrupted; results written so far are intact")
    saved = json.loads(out.read_text())
    assert not saved["complete"] and [s["key"] for s in saved["sets"]][0] == "pgd/torch/eps=0.1"
    done = cli("evaluate", *map(str, args[4:]), "--resume")
    assert done.returncode == 0, done.stderr
    assert "pgd/torch" not in done.stderr and json.loads(out.read_text())["complete"]
