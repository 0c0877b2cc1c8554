"""A real ONNX Model Zoo classifier imported without hand edits and attacked end to end on real MNIST.

The file (`--file`, not shipped: model files stay out of the repository): the ONNX Model Zoo's MNIST CNN as first
committed to github.com/onnx/models (commit 8fcb943a, 2018-03-05, "adding mnist model (#19)", path mnist/model.onnx;
git blob a73c2dc4, SHA-256 819588f9...; `git show 8fcb943a:mnist/model.onnx > onnx-models-mnist-2018.onnx` in a
clone of that repository). Later zoo versions (mnist-1/7/8/12.onnx) are stored there as Git LFS pointers only.
It is a CNTK 2.4 export at opset 1 (ONNX Runtime runs 7 and later) with a hard-coded batch of 1, `auto_pad=
SAME_UPPER` convolutions, weights in Constant nodes and legacy `broadcast=1` bias adds; it takes pixels in [0, 1]
(the zoo's README: "Color value is scaled to [0.0, 1.0]"), which is robustdeploy's default preprocessing.

1. `import onnx` (the library call behind the CLI command printed below): the deployment is upgraded to opset 13,
   the PyTorch twin converted with its rewrites; the manifest records them and the parity of the twin with the
   deployment on ONNX Runtime.
2. `evaluate`: clean accuracy and PGD-40 (L-inf, step 2.5 * eps / 40, random start, 8-bit rounding) crafted on the
   twin, scored on torch and ort-cpu, on the first --limit images of the test split (MNIST's 10,000 test images
   split 7,000 / 1,500 / 1,500 by seed 0).
3. torchattacks' PGD with the same settings on the same twin and images, its examples rounded to the 8-bit grid
   inside the budget as the deployment receives them, scored on ort-cpu.

Usage: python benchmarks/zoo.py --file onnx-models-mnist-2018.onnx --data-root ../shared/data/mnist [--limit 300]
       [--eps 0.1] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

STEPS, REL_STEP = 40, 2.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, required=True, help="the Model Zoo's mnist/model.onnx of commit 8fcb943a")
    parser.add_argument("--data-root", required=True, help="MNIST's IDX files (t10k-*.gz)")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--out", default="benchmarks/results/zoo.json")
    args = parser.parse_args()
    if not args.file.is_file():
        parser.error(f"--file {args.file} is not a file; give the Model Zoo's mnist/model.onnx (see this script's "
                     "docstring for where to get it)")

    import torch
    import torchattacks

    from robustdeploy.data import DataConfig, load_dataset
    from robustdeploy.evaluation.grid import realise
    from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
    from robustdeploy.importer import ImportConfig, import_onnx
    from robustdeploy.io import atomic_write_json
    from robustdeploy.preprocess import Preprocessing
    from robustdeploy.report import table
    from robustdeploy.runtimes import create_runtime

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="zoo-"))
    pre = Preprocessing((1, 28, 28))  # pixels in [0, 1], nothing to normalise
    print(f"robustdeploy import onnx {args.file} --dataset mnist --data-root {args.data_root} --input-size 1 28 28 "
          f"--parity-limit {args.limit} --out {work / 'bundle'}")
    start = time.perf_counter()
    bundle = import_onnx(ImportConfig(out=work / "bundle", parity_limit=args.limit,
                                      data=DataConfig("mnist", args.data_root, preprocessing=pre)), args.file)
    import_seconds = time.perf_counter() - start
    gradients, parity = bundle.manifest["gradients"], bundle.variants["fp32"]["parity"]
    rewrites = bundle.manifest["source"]["rewrites"] + gradients.get("rewrites", [])
    print(f"import {import_seconds:.1f} s; gradients: {gradients['source']}; twin vs deployment on "
          f"{parity['samples']} images: max |diff| {parity['max_abs']:.2e}, agreement {parity['agreement']:.2f}%")
    for rewrite in rewrites:
        print(f"  rewrite: {rewrite['detail']}")

    result = evaluate(EvalConfig(bundle=bundle.path, runtimes=("torch", "ort-cpu"), attacks=("pgd",),
                                 epsilons=tuple(args.eps), limit=args.limit, out=work / "pgd.json"))
    test = load_dataset(bundle.data).test.head(args.limit)
    twin, ort = bundle.reference_model(), create_runtime(bundle, "ort-cpu")
    ours = {(c["eps"], c["runtime"]): c for c in result.cells}
    rows, peers = [], {}
    for eps in args.eps:
        torch.manual_seed(0)
        start = time.perf_counter()
        adv = torchattacks.PGD(twin, eps=eps, alpha=REL_STEP * eps / STEPS, steps=STEPS, random_start=True)(
            test.x, test.y)
        seconds = time.perf_counter() - start
        adv = realise(adv, test.x, eps, "linf")
        peers[eps] = {"robust_accuracy": round(100 * float((ort.predict(adv) == test.y).float().mean()), 2),
                      "seconds": round(seconds, 2)}
        for runtime in ("torch", "ort-cpu"):
            cell = ours[(eps, runtime)]
            rows.append([eps, f"robustdeploy PGD-{STEPS} -> {runtime}", cell["clean_accuracy"],
                         cell["robust_accuracy"]])
        rows.append([eps, f"torchattacks PGD-{STEPS} (rounded) -> ort-cpu", ours[(eps, "ort-cpu")]["clean_accuracy"],
                     peers[eps]["robust_accuracy"]])
    print(f"{args.limit} MNIST test images (seed-0 split of the 10,000), one CPU thread")
    print(table(["eps", "attack -> scored on", "clean %", "robust %"], rows))
    atomic_write_json(Path(args.out), {
        "file": str(args.file), "limit": args.limit, "steps": STEPS, "rel_step": REL_STEP,
        "import_seconds": round(import_seconds, 2), "gradients": gradients["source"], "parity": parity,
        "rewrites": rewrites, "robustdeploy": result.cells, "torchattacks": {str(k): v for k, v in peers.items()}})


if __name__ == "__main__":
    main()
