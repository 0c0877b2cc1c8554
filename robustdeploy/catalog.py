"""The names `robustdeploy list` and `--help` show, without importing torch: for every registry, each registered name,
the module whose import registers it, and one line about it. The registries stay the truth; tests/test_catalog.py
fails when a name is registered without its line here (or listed here without a registration)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    module: str  # importing it registers the name
    doc: str


def _entries(module: str, docs: dict[str, str]) -> dict[str, Entry]:
    return {name: Entry(module, doc) for name, doc in docs.items()}


_SEED_NETS = "robustdeploy.models.seed_nets"

# kind -> ("module:REGISTRY", name -> entry); the kinds in the order `robustdeploy list` prints them
CATALOG: dict[str, tuple[str, dict[str, Entry]]] = {
    "datasets": ("robustdeploy.data:DATASETS", _entries("robustdeploy.data", {
        "cifar10": "torchvision CIFAR-10 from --data-root",
        "digits": "scikit-learn's 8x8 handwritten digits: the built-in default",
        "fashion-mnist": "Fashion-MNIST from --data-root (IDX files)",
        "gtsrb": "GTSRB traffic signs (43 classes) from --data-root, official layout",
        "imagefolder": "any folder of class sub-folders of images",
        "mnist": "MNIST from --data-root (IDX files)",
    })),
    "architectures": ("robustdeploy.models:MODELS", {
        **_entries(_SEED_NETS, {"cnn": "seed 001 CNN", "cnn-bn": "seed 001 CNN with batch norm",
                                "cnn-d": "seed 001 CNN with dropout", "mlp": "seed 001 MLP",
                                "mlp-bn": "seed 001 MLP with batch norm", "mlp-d": "seed 001 MLP with dropout"}),
    }),
    "attacks": ("robustdeploy.attacks:ATTACKS", {
        **_entries("robustdeploy.attacks.apgd", {
            "apgd": "Auto-PGD (Croce & Hein 2020), loss ce, dlr or margin",
            "apgd-t": "AutoAttack's targeted APGD on the DLR loss"}),
        **_entries("robustdeploy.attacks.ddn", {"ddn": "Decoupled Direction and Norm, minimal L2 (Rony et al. 2019)"}),
        **_entries("robustdeploy.attacks.dichotomy", {"dichotomy": "seed 001: per-sample bisection of the budget"}),
        **_entries("robustdeploy.attacks.fgsm", {"fgsm": "fast gradient sign method (Goodfellow et al. 2015)"}),
        **_entries("robustdeploy.attacks.hsj", {"hopskipjump": "HopSkipJump, decisions only (Chen et al. 2020)"}),
        **_entries("robustdeploy.attacks.minimal", {"minimal": "seed 001's automatic minimal-norm attack"}),
        **_entries("robustdeploy.attacks.pgd", {"pgd": "projected gradient descent (Madry et al. 2018)"}),
        **_entries("robustdeploy.attacks.square", {"square": "Square attack, scores only (Andriushchenko et al.)"}),
    }),
    "diff searches": ("robustdeploy.attacks:SEARCHES", {
        **_entries("robustdeploy.attacks.diffchaser", {"genetic": "query-only genetic search (DiffChaser)"}),
        **_entries("robustdeploy.attacks.differential", {"gradient": "gradient-guided boundary walk"}),
        **_entries("robustdeploy.attacks.diva", {"diva": "DIVA divergence: only the deployment wrong (Hong et al. "
                                                         "2022)"}),
    }),
    "runtimes": ("robustdeploy.runtimes:RUNTIMES", {
        **_entries("robustdeploy.runtimes.ort", {"ort-cpu": "ONNX Runtime, CPUExecutionProvider",
                                                 "ort-cuda": "ONNX Runtime, CUDAExecutionProvider",
                                                 "ort-trt": "ONNX Runtime, TensorrtExecutionProvider"}),
        **_entries("robustdeploy.runtimes.torch", {"torch": "the PyTorch fp32 reference graph (gradients)"}),
    }),
    "defenses": ("robustdeploy.defenses:DEFENSES", {
        **_entries("robustdeploy.defenses.advtrain", {"adv-train": "adversarial training: madry, early-stop, trades"}),
        **_entries("robustdeploy.defenses.distill", {"distillation": "defensive distillation (Papernot et al. 2016)"}),
        **_entries("robustdeploy.defenses.standard", {"none": "the undefended classifier"}),
        **_entries("robustdeploy.defenses.purify", {"purifier": "autoencoder or VAE purifier before the classifier"}),
        **_entries("robustdeploy.defenses.transfer", {"transfer": "retrain the last layer of a trained run"}),
    }),
    "detectors": ("robustdeploy.defenses:DETECTORS", _entries("robustdeploy.defenses.squeeze", {
        "squeeze": "feature squeezing (Xu et al. 2018)"})),
    "transforms": ("robustdeploy.defenses:TRANSFORMS", _entries("robustdeploy.defenses.lgs", {
        "lgs": "local gradient smoothing (Naseer et al. 2019)"})),
}


def names(kind: str) -> list[str]:
    """The registered names of `kind` (a key of CATALOG), sorted as the registries sort them."""
    return sorted(CATALOG[kind][1])
