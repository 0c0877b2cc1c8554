"""Issue 23: nothing half-done on a full disk, a tampered file or a bad suite; every long loop speaks. Each case
is one `error:` line and exit 2, and nothing half-written is left behind."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from robustdeploy.cli import main
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.progress import Meter
from tests.test_bad_input import refused


@pytest.fixture(scope="module")
def result_file(bundle_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("result")
    return evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch",), epsilons=(0.1,), limit=6,
                               out=folder / "r.json", attack_params={"steps": 2})).path


@pytest.fixture()
def full_disk(tmp_path) -> Path:
    """A real, tiny tmpfs filled to the last byte (needs root and mount; skipped where the system refuses)."""
    mount = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def left_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# 1. Storage errors: one line naming the path the user gave, for every writer (safetensors included).
def test_a_full_disk_is_one_line_for_each_writer(full_disk, bundle_dir, result_file, work, capsys,
                                                   monkeypatch):
    out = full_disk / "out"
    refused(capsys, monkeypatch, ["-q", "train", "--epochs", "1", "--out", out / "run"],
            f"cannot write {out / 'run'}: no space left on the device", untouched=(work,))
    refused(capsys, monkeypatch, ["evaluate", bundle_dir, "-r", "torch", "--limit", "4", "--eps", "0.1",
                                  "--attack-opt", "steps=2", "--out", out / "res.json"],
            f"cannot write {out / 'res.'}", "no space left", untouched=(work, bundle_dir))
    refused(capsys, monkeypatch, ["report", result_file, "--html", out / "page.html"],
            f"cannot write {out / 'page.html'}: no space left", untouched=(work, result_file.parent))
    assert left_in(full_disk) == {"filler"}, "a failed write left something behind"


@pytest.mark.parametrize("code,needle", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EDQUOT, "the disk quota is exhausted"),
    (errno.EROFS, "the file system is read-only"),
    (errno.EIO, "an input/output error"),
])
def test_each_storage_error_is_named(result_file, tmp_path, work, capsys, monkeypatch, code, needle):
    def broken(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", broken)
    refused(capsys, monkeypatch, ["report", result_file, "--html", tmp_path / "page.html"],
            f"cannot write {tmp_path / 'page.html'}: {needle}", untouched=(work, result_file.parent))
    assert not list(tmp_path.glob("*page.html*")), "a partial page was left"


def test_safetensors_storage_errors_name_the_run(tmp_path, work, capsys, monkeypatch):
    """The safetensors writer reports the OS's text, not an OSError: mapped all the same, by the run folder."""
    import safetensors.torch

    def full(tensors, metadata=None):
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save", full)
    refused(capsys, monkeypatch, ["-q", "train", "--epochs", "1", "--out", tmp_path / "run"],
            f"cannot write {tmp_path / 'run'}: no space left", untouched=(work,))
    assert left_in(tmp_path) == {"work"}


# 2. Stored files validated at read: every named set, with its rows, shape and dtype; poison shards likewise.
def tamper(adv: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adv))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(adv))


@pytest.mark.parametrize("change,needle", [
    (lambda t: t.pop(next(k for k in t if k.startswith("pgd/"))), "that the result names is missing"),
    (lambda t: t.update({k: t[k][:5] for k in t if k.startswith("pgd/")}), "has 5 rows, expected 6"),
    (lambda t: t.update({k: (t[k] * 255).to(torch.uint8) for k in t if k.startswith("pgd/")}),
     "is U8, expected floating-point images"),
    (lambda t: t.update({k: t[k][:, :, :4] for k in t if k.startswith("pgd/")}), "holds images of shape [1, 4, 8]"),
    (lambda t: t.pop("y"), "the labels 'y' are missing"),
    (lambda t: t.update(y=t["y"][:5], x=t["x"][:5]), "5 labels for a result over 6 samples"),
])
def test_tampered_examples_are_named(result_file, tmp_path, work, capsys, monkeypatch, change, needle):
    folder = tmp_path / "copy"
    shutil.copytree(result_file.parent, folder)
    tamper(folder / "r.adv.safetensors", change)
    refused(capsys, monkeypatch, ["rescore", folder / "r.json"], f"{folder / 'r.adv.safetensors'}: ", needle,
            "re-run the evaluation", untouched=(work, folder))


def test_garbage_examples_are_named(result_file, tmp_path, work, capsys, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(result_file.parent, folder)
    (folder / "r.adv.safetensors").write_bytes(os.urandom(4096))
    refused(capsys, monkeypatch, ["rescore", folder / "r.json"], "is not a readable safetensors file",
            untouched=(work, folder))


def test_rescore_names_each_differing_cell_and_field(result_file, tmp_path, work, capsys, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(result_file.parent, folder)
    data = json.loads((folder / "r.json").read_text())
    cell = data["cells"][-1]
    cell["robust_accuracy"] += 10.0
    cell["attack_success_rate"] = -1.0
    (folder / "r.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys, "argv", ["robustdeploy", "rescore", str(folder / "r.json")])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1, err
    assert f"1 of {len(data['cells'])} scored cells" in err, err
    assert f"torch/pgd eps={cell['eps']:g}: robust_accuracy {cell['robust_accuracy']!r} -> " \
           f"{cell['robust_accuracy'] - 10.0!r}, attack_success_rate -1.0 -> " in err, err


@pytest.fixture()
def poison_set(tmp_path, digits) -> Path:
    from robustdeploy.data import DataConfig
    from robustdeploy.poison.store import write_poison_set

    index = torch.arange(0, 40, 3)
    manifest = {"method": "test", "eps": 0.1, "surrogates": [{}], "data": DataConfig().to_dict()}
    return write_poison_set(tmp_path / "poisons", manifest, digits.train.x[index], index, digits)


def rewrite_shard(folder: Path, change) -> Path:
    """Change the first shard and record its new hash, as a broken tool would."""
    from robustdeploy.io import sha256_file

    shard = next(folder.glob("shard-*.safetensors"))
    change(shard)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = sha256_file(shard)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return shard


@pytest.mark.parametrize("change,needle", [
    (lambda p: p.write_bytes(os.urandom(2048)), "is not a readable safetensors file"),
    (lambda p: tamper(p, lambda t: t.pop("x")), "lacks its 'x' tensor"),
    (lambda p: tamper(p, lambda t: t.update(x=t["x"].float() * 1000)), "'x' is float32, expected uint8"),
    (lambda p: tamper(p, lambda t: t.update(x=t["x"][:5])), "'x' has shape [5, 1, 8, 8], the manifest says [14,"),
    (lambda p: tamper(p, lambda t: t.update(extra=t["index"].clone())), "unexpected tensors ['extra']"),
])
def test_tampered_poison_shards_are_named(poison_set, work, capsys, monkeypatch, change, needle):
    shard = rewrite_shard(poison_set, change)
    refused(capsys, monkeypatch, ["-q", "train", "--epochs", "1", "--poison", poison_set, "--out", work / "r"],
            f"poison shard {shard}", needle, "regenerate the poison set")


def test_poison_count_against_the_manifest(poison_set, work, capsys, monkeypatch):
    manifest = json.loads((poison_set / "manifest.json").read_text())
    manifest["poisoned"] = 1000
    (poison_set / "manifest.json").write_text(json.dumps(manifest))
    refused(capsys, monkeypatch, ["-q", "train", "--epochs", "1", "--poison", poison_set, "--out", work / "r"],
            "its shards hold 14 images, its manifest says 1000")


# 3. Sizes against memory before allocating; every option checked before any work.
@pytest.mark.parametrize("extra,needle", [
    (["--threads", "-2"], "--threads -2 is outside [0, 1024]"),
    (["--graph-optimization", "fastest"], "unknown graph optimisation level 'fastest'"),
    (["--batch-size", str(10**12)], f"--batch-size {10**12} needs"),
])
def test_bench_options_before_any_timing(bundle_dir, work, capsys, monkeypatch, extra, needle):
    import robustdeploy.bench

    def never(*args, **kwargs):
        raise AssertionError("a runtime was opened before the options were checked")

    monkeypatch.setattr(robustdeploy.bench, "create_runtime", never)
    refused(capsys, monkeypatch, ["bench", bundle_dir, "-r", "torch", "-r", "ort-cpu", *extra], needle,
            untouched=(work, bundle_dir))


def test_sizes_against_the_memory_available(bundle_dir, work, capsys, monkeypatch):
    """With 1 GiB available, the issue's `bench --batch-size 100000000` (25.6 GB of 8x8 pixels) and a window too
    large for it are refused before anything is allocated."""
    import robustdeploy.memory

    monkeypatch.setattr(robustdeploy.memory, "available_bytes", lambda device="cpu": 2**30)
    refused(capsys, monkeypatch, ["bench", bundle_dir, "-r", "torch", "--batch-size", "100000000"],
            "--batch-size 100000000 needs 23.8 GiB of memory, more than half of the 1.0 GiB available",
            "give a smaller --batch-size", untouched=(work, bundle_dir))
    monkeypatch.setattr(robustdeploy.memory, "available_bytes", lambda device="cpu": 2**16)
    refused(capsys, monkeypatch, ["evaluate", bundle_dir, "-r", "torch", "--limit", "100", "--window", "100",
                                  "--out", work / "r.json"], "--window 100 needs", "give a smaller --window",
            untouched=(work, bundle_dir))


def test_an_absurd_input_size_is_refused_before_the_resize(bundle_dir, work, capsys, monkeypatch):
    refused(capsys, monkeypatch, ["import", "onnx", bundle_dir / "model.onnx", "--input-size", "1", "100000",
                                  "100000", "--out", work / "b"],
            "--input-size 1 100000 100000 is 10,000,000,000 values per image", untouched=(work, bundle_dir))


GOOD_ENTRY = "[[evaluation]]\nname = 'first'\nattacks = ['fgsm']\neps = [0.05]\nlimit = 8\n"


@pytest.mark.parametrize("entry,needle", [
    ("eps = [5.0]", "suite.toml evaluation 2 (bad): eps: 5 is outside [0, 1]"),
    ("runtimes = ['ort-gpu']", "suite.toml evaluation 2 (bad): runtimes: unknown runtime 'ort-gpu'"),
    ("params = { steps = 'abc' }", "suite.toml evaluation 2 (bad): params: attack 'pgd' option 'steps' takes an "
                                   "integer, not 'abc'"),
    ("params = { nosuch = 1 }", "suite.toml evaluation 2 (bad): params: no attack of pgd takes nosuch"),
    ("attacks = ['pgdd']", "suite.toml evaluation 2 (bad): attacks: unknown attack 'pgdd'"),
    ("window = 0", "suite.toml evaluation 2 (bad): window must be at least 1"),
    ("device = 'tpu'", "suite.toml evaluation 2 (bad): device: "),
])
def test_a_suite_is_validated_whole_before_it_runs(bundle_dir, tmp_path, work, capsys, monkeypatch, entry, needle):
    suite = tmp_path / "suite.toml"
    suite.write_text(f"bundles = ['{bundle_dir}']\n{GOOD_ENTRY}[[evaluation]]\nname = 'bad'\n{entry}\n")
    refused(capsys, monkeypatch, ["run", suite], needle, untouched=(work,))
    assert not (tmp_path / "suite-results").exists(), "an evaluation ran before the suite was validated"


# 4. Progress inside long loops: training per batch, the disagreement search per query, with rate and time left.
PACE = re.compile(r"\(\d\d:\d\d elapsed, [\d.]+ (\w+/s|s/\w+), \d\d:\d\d left\)$")


def test_training_speaks_within_an_epoch(caplog, monkeypatch):
    from robustdeploy.data import DataConfig, load_dataset
    from robustdeploy.train import TrainConfig, fit, new_classifier

    monkeypatch.setattr(Meter, "EVERY", 0.0)
    caplog.set_level(logging.INFO, logger="robustdeploy")
    data = load_dataset(DataConfig())
    model, _ = new_classifier("mlp", data)
    fit(model, data, TrainConfig(arch="mlp", epochs=1, batch_size=256))
    batches = [r.getMessage() for r in caplog.records if "epoch 1/1: batch" in r.getMessage()]
    assert batches and batches[0].startswith("train: epoch 1/1: batch 1/5 ") and PACE.search(batches[0]), batches


def test_the_disagreement_search_speaks_per_query(bundle_dir, tmp_path, caplog, monkeypatch):
    from robustdeploy.evaluation.plans.diff import DiffConfig, run_diff

    monkeypatch.setattr(Meter, "EVERY", 0.0)
    monkeypatch.setattr(Meter, "REFRESH", 0.0)
    caplog.set_level(logging.INFO, logger="robustdeploy")
    run_diff(DiffConfig(bundle=bundle_dir, against=("ort-cpu",), epsilons=(0.03,), budget=6, limit=20,
                        searches=("gradient",), out=tmp_path / "d.json"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disagreement search, eps 0.03:")]
    assert any(PACE.search(line) for line in lines), lines
    assert all(PACE.search(line) or line.endswith(" elapsed, none done yet)") for line in lines), lines
    counts = [int(re.search(r"query (\d+)/", line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[-1] < int(re.search(r"/(\d+) ", lines[0]).group(1)), lines


def test_a_meter_is_silent_under_quiet(caplog):
    caplog.set_level(logging.WARNING, logger="robustdeploy")
    with Meter(4, "quiet", "batch") as meter:
        for i in range(4):
            meter.update(i + 1)
    assert not caplog.records


# 5. A windowed evaluation interrupted (Ctrl-C, kill -9) and resumed gives the uninterrupted result exactly.
WINDOWED = dict(attacks=("pgd",), epsilons=(0.1,), limit=64, batch_size=8, window=8, runtimes=("torch", "ort-cpu"),
                attack_params={"steps": 10})


@pytest.fixture(scope="module")
def uninterrupted(bundle_dir, tmp_path_factory):
    from robustdeploy.evaluation.results import load_result

    out = tmp_path_factory.mktemp("whole") / "r.json"
    evaluate(EvalConfig(bundle=bundle_dir, out=out, **WINDOWED))
    return load_result(out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_windowed_evaluation_resumes_exactly(bundle_dir, uninterrupted, tmp_path, signum):
    from robustdeploy.evaluation.results import load_result
    from robustdeploy.evaluation.shards import folder

    out = tmp_path / "r.json"
    args = ["evaluate", bundle_dir, "-r", "torch", "-r", "ort-cpu", "--attack", "pgd", "--eps", "0.1",
            "--attack-opt", "steps=10", "--limit", "64", "--batch-size", "8", "--window", "8", "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "robustdeploy", *map(str, args)], stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not list(folder(out).glob("samples-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    if signum == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted; results written so far are intact" in err, err
        assert "Traceback" not in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert list(folder(out).glob("samples-*.json")), "the run was not interrupted mid-way"
    assert not (out.is_file() and json.loads(out.read_text())["complete"]), "the run finished before the signal"
    resumed = evaluate(EvalConfig(bundle=bundle_dir, out=out, resume=True, **WINDOWED))
    whole, whole_stored = uninterrupted
    assert resumed.complete and resumed.cells == whole.cells
    stored = load_result(out)[1]
    assert set(stored) == set(whole_stored) and all(torch.equal(stored[k], whole_stored[k]) for k in stored)
