"""The bad-input corpus: for every family of user mistake and hostile input, each command answers with one
`error:` line and exit code 2 — no traceback, nothing left behind, nothing outside the bundle touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from robustdeploy.cli import main
from tests.conftest import rehash


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots` with its size and modification time: what 'touched' means here."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if path.exists():
                stat = path.stat()
                found[str(path)] = (path.is_dir(), stat.st_size if path.is_file() else 0, stat.st_mtime_ns)
    return found


def refused(capsys, monkeypatch, args: list, *needles: str, untouched: tuple[Path, ...] = ()) -> str:
    """Run the CLI in this process; assert one error line naming `needles`, exit 2, and `untouched` unchanged."""
    before = snapshot(*untouched)
    monkeypatch.setattr(sys, "argv", ["robustdeploy", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert stop.value.code == 2, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(*untouched) == before, "the failed command left something behind or touched a file"
    return lines[0]


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# 1. Documents with wrong JSON types or unknown keys: checked against their declared, versioned schema.
@pytest.mark.parametrize("change,needle", [
    (lambda m: m["model"].update(num_classes="ten"), "model.num_classes is \"ten\", expected integer"),
    (lambda m: m.update(surprise=1), "surprise is not a known key"),
    (lambda m: m["variants"].update(fp32="model.onnx"), "variants.fp32 is \"model.onnx\", expected object"),
    (lambda m: m["files"].update({"model.onnx": 123}), "files.model.onnx is 123, expected string"),
    (lambda m: m["model"].update(mean="0.3"), "model.mean is \"0.3\", expected array"),
    (lambda m: m["model"].update(std=[0.0]), "model.std[0] is 0.0, outside its range"),
    (lambda m: m.update(data=[]), "data is [], expected object"),
    (lambda m: m.update(detector={"file": 3}), "detector lacks 'threshold'"),
    (lambda m: m["variants"]["fp32"].update(precision="fp8"), "variants.fp32.precision is 'fp8', expected one"),
    (lambda m: m.update(format="robustdeploy-bundle/9"), "not a robustdeploy-bundle/1 document"),
    (lambda m: m.pop("reference"), "lacks 'reference'"),
])
def test_manifest_against_its_schema(bundle_copy, work, capsys, monkeypatch, change, needle):
    edit_json(bundle_copy / "manifest.json", change)
    refused(capsys, monkeypatch, ["evaluate", bundle_copy, "-r", "torch", "--limit", "4"], needle,
            untouched=(work, bundle_copy))


def test_manifest_that_is_not_an_object(bundle_copy, work, capsys, monkeypatch):
    (bundle_copy / "manifest.json").write_text("[1, 2, 3]")
    refused(capsys, monkeypatch, ["compare", bundle_copy], "not a robustdeploy-bundle/1 document",
            untouched=(work, bundle_copy))


@pytest.mark.parametrize("change,needle", [
    (lambda r: r.update(classes=5), "classes is 5, expected array"),
    (lambda r: r["model"].update(input_shape=[1, 8]), "model.input_shape has 2 items, expected 3"),
    (lambda r: r.update(extra_key=True), "extra_key is not a known key"),
    (lambda r: r["data"].update(seed="zero"), "data.seed is \"zero\", expected integer"),
])
def test_run_record_against_its_schema(run_dir, tmp_path, work, capsys, monkeypatch, change, needle):
    import shutil

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    edit_json(run / "run.json", change)
    refused(capsys, monkeypatch, ["export", run, "--out", work / "b"], needle, untouched=(work, run))


@pytest.mark.parametrize("change,needle", [
    (lambda r: r.update(cells={}), "cells is {}, expected array"),
    (lambda r: r.update(kind="magic"), "kind is 'magic', expected one of"),
    (lambda r: r["sets"][0].pop("key"), "sets[0] lacks 'key'"),
    (lambda r: r.update(hand_edited=1), "hand_edited is not a known key"),
])
def test_result_against_its_schema(bundle_dir, tmp_path, work, capsys, monkeypatch, change, needle):
    from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate

    folder = tmp_path / "results"
    out = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch",), epsilons=(0.1,), limit=6, out=folder / "r.json",
                              attack_params={"steps": 3})).path
    edit_json(out, change)
    refused(capsys, monkeypatch, ["rescore", out], needle, untouched=(work, folder, bundle_dir))


# 2. A graph that disagrees with its manifest, or sizes that would allocate absurd memory.
@pytest.mark.parametrize("change,needle", [
    (lambda m: (m["input"].update(shape=[None, 1, 9, 9]), m["model"].update(input_shape=[1, 9, 9])),
     "takes inputs of shape [1, 8, 8], the manifest declares [1, 9, 9]"),
    (lambda m: (m["input"].update(shape=[None, 1, 100000, 100000]),
                m["model"].update(input_shape=[1, 100000, 100000])), "refusing it"),
    (lambda m: m["input"].update(shape=[None, 3, 8, 8]), "the model's input_shape disagrees"),
    (lambda m: m.update(classes=["a", "b"]), "names 2 classes for a model with 10 outputs"),
    (lambda m: m["variants"].update(fp16={"file": "other.onnx", "precision": "fp16"}), "not hashed"),
])
def test_graph_and_manifest_disagree(bundle_copy, work, capsys, monkeypatch, change, needle):
    edit_json(bundle_copy / "manifest.json", change)
    refused(capsys, monkeypatch, ["evaluate", bundle_copy, "-r", "ort-cpu", "--limit", "4"], needle,
            untouched=(work, bundle_copy))


def test_graph_replaced_by_garbage(bundle_copy, work, capsys, monkeypatch):
    (bundle_copy / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    rehash(bundle_copy, "model.onnx")
    refused(capsys, monkeypatch, ["bench", bundle_copy, "-r", "ort-cpu"], "not a valid ONNX file",
            untouched=(work, bundle_copy))


# 3. Output paths, all refused before any work starts.
def test_output_paths(bundle_dir, run_dir, tmp_path, work, capsys, monkeypatch):
    a_file = work / "a-file"
    a_file.write_text("keep me")
    watch = (work, bundle_dir, run_dir)
    run = ["evaluate", bundle_dir, "-r", "torch", "--limit", "4", "--out"]
    refused(capsys, monkeypatch, [*run, work], "is a folder", untouched=watch)
    refused(capsys, monkeypatch, [*run, a_file / "r.json"], "is a file, not a folder", untouched=watch)
    refused(capsys, monkeypatch, ["export", run_dir, "--out", a_file, "--force"], "is a file, not a folder",
            untouched=watch)
    refused(capsys, monkeypatch, ["export", run_dir, "--out", bundle_dir], "already exists", "--force",
            untouched=watch)
    refused(capsys, monkeypatch, ["train", "--out", a_file], "is a file, not a folder", untouched=watch)
    refused(capsys, monkeypatch, ["check", bundle_dir, "--limit", "4", "--markdown", work], "is a folder",
            untouched=watch)
    refused(capsys, monkeypatch, ["check", bundle_dir, "--limit", "4", "--junit", a_file / "j.xml"],
            "is a file, not a folder", untouched=watch)
    refused(capsys, monkeypatch, ["bench", bundle_dir, "--out", work], "is a folder", untouched=watch)
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folders(bundle_dir, run_dir, tmp_path, work, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for args in (["evaluate", bundle_dir, "-r", "torch", "--out", locked / "r.json"],
                     ["export", run_dir, "--out", locked / "b"],
                     ["check", bundle_dir, "--junit", locked / "j.xml"]):
            refused(capsys, monkeypatch, args, "not writable", untouched=(work, locked))
    finally:
        locked.chmod(0o755)


# 4. Legal-looking options that cannot work.
@pytest.mark.parametrize("extra,needle", [
    (["--attack-opt", "steps=abc"], "option 'steps' takes an integer, not 'abc'"),
    (["--attack-opt", "steps=1.5"], "takes an integer, not 1.5"),
    (["--attack-opt", "nosuch=1"], "takes nosuch"),
    (["--attack-opt", "steps"], "is not key=value"),
    (["--attack", "ddn", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--eps", "1.5"], "outside [0, 1]"),
    (["--eps", "-0.1"], "outside [0, 1]"),
    (["-r", "torch"], "listed twice"),
    (["-r", "ort-cpu:int9"], "has no 'int9' variant"),
    (["-r", "tflite"], "unknown runtime"),
    (["--attack", "nosuch"], "unknown attack"),
    (["--norm", "l3"], "supports linf, l2"),
    (["--device", "cuda"], "CUDA"),
    (["--data-root", "."], "drop --data-root"),
])
def test_options_that_cannot_work(bundle_dir, work, capsys, monkeypatch, extra, needle):
    refused(capsys, monkeypatch, ["evaluate", bundle_dir, "-r", "torch", "--limit", "4", *extra], needle,
            untouched=(work, bundle_dir))


def test_eps_zero_is_a_clean_run_not_a_crash(bundle_dir, tmp_path):
    """A zero budget is legal: robust accuracy equals clean accuracy, and the figure writer copes."""
    from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate

    result = evaluate(EvalConfig(bundle=bundle_dir, runtimes=("torch",), epsilons=(0.0,), limit=8,
                                 out=tmp_path / "r.json", attack_params={"steps": 2}))
    cell = result.cell("torch", 0.0)
    assert cell["robust_accuracy"] == cell["clean_accuracy"]


# 5. Corrupt images in an image folder are named.
def _folder(root: Path, broken: Callable[[Path], None] | None = None) -> Path:
    from PIL import Image

    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), 40 * i if label == "a" else 255 - 40 * i).save(root / label / f"{i}.png")
    if broken:
        broken(root / "b" / "3.png")
    return root


@pytest.mark.parametrize("broken,needle", [
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "3.png"),
    (lambda p: p.write_text("not an image"), "3.png"),
    (lambda p: p.write_bytes(b""), "3.png"),
])
def test_corrupt_images_are_named(tmp_path, work, capsys, monkeypatch, broken, needle):
    root = _folder(tmp_path / "images", broken)
    refused(capsys, monkeypatch, ["train", "--dataset", "imagefolder", "--data-root", root, "--epochs", "1",
                                  "--out", work / "run"], needle, untouched=(work, root))


# 6. What used to be accepted silently.
def test_one_class_folder_and_missing_root(tmp_path, work, capsys, monkeypatch):
    root = _folder(tmp_path / "images")
    import shutil

    shutil.rmtree(root / "b")
    train = ["train", "--dataset", "imagefolder", "--epochs", "1", "--out", work / "run"]
    refused(capsys, monkeypatch, [*train, "--data-root", root], "class", untouched=(work, root))
    refused(capsys, monkeypatch, [*train, "--data-root", tmp_path / "absent"], "absent", untouched=(work,))
    refused(capsys, monkeypatch, [*train[:-2], "--val-fraction", "1.5"], "fraction", untouched=(work,))


# 7. One line where PyTorch or click would print several.
def test_weights_of_the_wrong_shape(run_dir, tmp_path, work, capsys, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.dim() == 4 and v.shape[-1] > 2)  # a convolution's kernel
    state[name] = state[name][:, :, :2, :2].contiguous()
    save_file(state, str(run / "model.safetensors"))
    refused(capsys, monkeypatch, ["export", run, "--out", work / "b"], name, untouched=(work, run))


@pytest.mark.parametrize("size,needles", [("0", ("--image-size must be at least 1",)),
                                           ("3", ("'cnn' cannot take 3x3 images", "--image-size"))])
def test_an_image_size_the_model_cannot_take(work, capsys, monkeypatch, size, needles):
    """Refused in one line before training: no traceback from inside the network's pooling."""
    refused(capsys, monkeypatch, ["train", "--image-size", size, "--epochs", "1", "--out", work / "run"], *needles,
            untouched=(work,))


@pytest.mark.parametrize("args,needle", [
    (["evaluate", "BUNDLE", "--limit", "abc"], "--limit"),
    (["evaluate", "BUNDLE", "--eps", "small"], "--eps"),
    (["train", "--epochs", "many"], "--epochs"),
    (["bench", "BUNDLE", "--batch-size", "1x"], "--batch-size"),
    (["evaluate", "BUNDLE", "--nope"], "No such option"),
])
def test_text_where_a_number_goes(bundle_dir, work, capsys, monkeypatch, args, needle):
    args = [bundle_dir if a == "BUNDLE" else a for a in args]
    refused(capsys, monkeypatch, args, needle, "--help", untouched=(work, bundle_dir))


# 8. Two runs never write the same output at once.
def _hold(path: Path) -> subprocess.Popen:
    """Another process that has claimed `path` and keeps it until killed."""
    code = ("import sys, time; from pathlib import Path; from robustdeploy.io import claim; "
            "claim(Path(sys.argv[1]), '--out'); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["evaluate", "export", "train", "compare"])
def test_concurrent_runs_on_one_output(bundle_dir, run_dir, work, capsys, monkeypatch, command):
    out = work / ("r.json" if command in ("evaluate", "compare") else "folder")
    args = {"evaluate": ["evaluate", bundle_dir, "-r", "torch", "--limit", "4", "--out", out],
            "compare": ["compare", bundle_dir, "-r", "torch", "--limit", "4", "--out", out],
            "export": ["export", run_dir, "--out", out],
            "train": ["train", "--epochs", "1", "--out", out]}[command]
    holder = _hold(out)
    try:
        refused(capsys, monkeypatch, args, "another robustdeploy run is writing", "wait for it",
                untouched=(bundle_dir, run_dir))
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_a_killed_runs_lock_dies_with_it(work):
    """A lock is held by a live process, not by a file: after kill -9 the next run goes ahead."""
    from robustdeploy.io import claim, exclusive_outputs

    out = work / "r.json"
    holder = _hold(out)
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    exclusive_outputs(claim)(out, "--out")  # no error: the dead run's lock went with it
    assert not (work / ".r.json.lock").exists()
