"""Dataset registry, deterministic splits and the built-in default (scikit-learn digits).

Every dataset yields float32 pixels in [0, 1], shape (N, C, H, W); normalisation lives inside the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from robustdeploy.errors import RobustDeployError
from robustdeploy.preprocess import Preprocessing
from robustdeploy.registry import Registry


@dataclass(frozen=True)
class DataConfig:
    """How a dataset was loaded and split; recorded in runs, bundles and results."""

    name: str = "digits"
    data_root: str | None = None
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    image_size: int | None = None
    download: bool = False
    preprocessing: Preprocessing | None = None  # how image files become pixels (imagefolder); see preprocess.py
    classes: tuple[str, ...] | None = None  # the model's class names: the data's classes map into them (map_labels)
    class_map: dict[str, str] | None = None  # data class name -> model class name, where the names differ

    def __post_init__(self) -> None:
        if isinstance(self.preprocessing, dict):  # read back from a manifest or run record
            object.__setattr__(self, "preprocessing", Preprocessing.from_dict(self.preprocessing))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.image_size is not None and self.image_size < 1:
            raise RobustDeployError(f"--image-size must be at least 1 pixel, got {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, limit: int | None) -> Split:
        return self if limit is None else Split(self.x[:limit], self.y[:limit])


@dataclass(frozen=True)
class Samples:
    """A split whose pixels are read a range at a time (`read(start, stop)`), labels in memory: an evaluation over
    it holds one window of images, not the split."""

    y: torch.Tensor
    read: Callable[[int, int], torch.Tensor]
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.y)

    def head(self, limit: int | None) -> Samples:
        return self if limit is None else Samples(self.y[:limit], self.read, self.shape)

    def part(self, start: int, stop: int) -> Samples:
        """Samples [start, stop) of this split, still unread."""
        return Samples(self.y[start:stop], lambda a, b: self.read(start + a, start + b), self.shape)

    def load(self) -> Split:
        """Every pixel in memory."""
        return Split(self.read(0, len(self)), self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise RobustDeployError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split (baked into the model's normalisation)."""
        x = self.train.x
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


@dataclass(frozen=True)
class RawData:
    """What a dataset factory returns: a pool to split, or an official train/test pair."""

    classes: tuple[str, ...]
    x: np.ndarray | Images  # uint8 or float in [0, 1], (N, C, H, W); `x[index]` gives those samples' pixels
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


DATASETS: Registry[RawData] = Registry("dataset")


def _to_float(x: np.ndarray) -> torch.Tensor:
    """Pixels as float32 in standard (N, C, H, W) strides: numpy may hand a size-1 channel axis odd strides,
    which PyTorch reads as channels-last and convolves with other kernels (float results that differ by 1e-6)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32, memory_format=torch.contiguous_format)
    return t.div_(255.0) if x.dtype == np.uint8 else t


def _permute(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _check_fractions(config: DataConfig) -> None:
    if not 0.0 < config.val_fraction < 1.0 or not 0.0 <= config.test_fraction < 1.0:
        raise RobustDeployError("--val-fraction and --test-fraction must lie in (0, 1)")


def _sizes(n: int, config: DataConfig, official_test: bool) -> tuple[int, int]:
    """(test, validation) sample counts of a pool of `n`, checked; no test samples where the test set is official."""
    n_val = max(1, int(round(n * config.val_fraction)))
    n_test = 0 if official_test else max(1, int(round(n * config.test_fraction)))
    if n - n_val - n_test <= 0:
        raise RobustDeployError(f"dataset {config.name!r} is too small to split; lower the fractions")
    return n_test, n_val


def load_dataset(config: DataConfig) -> Dataset:
    """Load and split a registered dataset deterministically from `config.seed`."""
    _check_fractions(config)  # before anything is read
    raw = raw_data(config)
    order = _permute(len(raw.y), config.seed)  # permuted before the float copy: one float copy of the pool, not two
    x, y = _to_float(raw.x[order]), torch.from_numpy(np.asarray(raw.y)[order]).long()
    n_test, n_val = _sizes(len(y), config, raw.x_test is not None)
    if raw.x_test is not None:
        test = Split(_to_float(raw.x_test), torch.from_numpy(np.asarray(raw.y_test)).long())
    else:
        test = Split(x[:n_test], y[:n_test])
    val = Split(x[n_test : n_test + n_val], y[n_test : n_test + n_val])
    train = Split(x[n_test + n_val :], y[n_test + n_val :])
    return Dataset(config.name, raw.classes, train, val, test)


def load_test_samples(config: DataConfig) -> Samples:
    """The test split of `load_dataset(config)`, the same samples in the same order, its pixels converted (an image
    folder's: decoded) a range at a time when read, so neither the pool nor its float copy is ever made whole."""
    _check_fractions(config)
    raw = raw_data(config)
    n_test, _ = _sizes(len(raw.y), config, raw.x_test is not None)
    if raw.x_test is not None:
        pool, labels, index = raw.x_test, np.asarray(raw.y_test), np.arange(len(raw.y_test))
    else:
        pool, labels, index = raw.x, np.asarray(raw.y), _permute(len(raw.y), config.seed)[:n_test]

    def read(start: int, stop: int) -> torch.Tensor:
        return _to_float(pool[index[start:stop]])

    return Samples(torch.from_numpy(labels[index]).long(), read, tuple(read(0, 1).shape[1:]))  # type: ignore[arg-type]


def raw_data(config: DataConfig) -> RawData:
    """The registered dataset's pool, at `config.image_size` and with labels into the model's classes."""
    return map_labels(at_size(DATASETS.get(config.name)(config), config.image_size), config)


def at_size(raw: RawData, size: int | None, chunk: int = 4096) -> RawData:
    """Arrays resized to `size` x `size`, bilinear (uint8 stays uint8, rounded): where every array dataset honours
    --image-size. Image folders and GTSRB decode their files at that size themselves."""
    if not size:
        return raw

    def fit(x: np.ndarray | Images | None) -> np.ndarray | Images | None:
        if not isinstance(x, np.ndarray) or x.shape[-2:] == (size, size):
            return x
        parts = []
        for start in range(0, len(x), chunk):  # one float copy of a chunk at a time, not of the pool
            part = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x[start:start + chunk]))
                                                   .float(), size=size, mode="bilinear", align_corners=False)
            parts.append(part.round().clamp(0, 255).to(torch.uint8).numpy() if x.dtype == np.uint8
                         else part.clamp(0, 1).numpy())
        return np.concatenate(parts)

    return replace(raw, x=fit(raw.x), x_test=fit(raw.x_test))


def map_labels(raw: RawData, config: DataConfig) -> RawData:
    """Labels as indices into the model's classes (`config.classes`): each data class by its name, or the name
    `config.class_map` gives it, so a folder holding a few of a model's classes is scored on its full output. Names
    of the same count that match none of the data's are a renaming, in label order."""
    if config.classes is None:
        return raw
    names, mapping = tuple(config.classes), config.class_map or {}
    unknown = sorted(set(mapping) - set(raw.classes))
    if unknown:
        raise RobustDeployError(f"--class-map names {unknown[0]!r}, which is not a class of the data (has "
                                f"{', '.join(raw.classes[:8])}); map the data's class names")
    targets = [mapping.get(c, c) for c in raw.classes]
    index = {name: i for i, name in enumerate(names)}
    if not mapping and len(names) == len(raw.classes) and not set(targets) & set(index):
        return RawData(names, raw.x, raw.y, raw.x_test, raw.y_test)
    missing = [c for c, t in zip(raw.classes, targets) if t not in index]
    if missing:
        raise RobustDeployError(f"the data's class {missing[0]!r} is not among the model's {len(names)} classes "
                                "(--classes); name it there, or map it with --class-map FILE (JSON: data class -> "
                                "model class)")
    lookup = np.array([index[t] for t in targets], dtype=np.int64)
    return RawData(names, raw.x, lookup[np.asarray(raw.y, dtype=np.int64)], raw.x_test,
                   None if raw.y_test is None else lookup[np.asarray(raw.y_test, dtype=np.int64)])


def _require_root(config: DataConfig) -> Path:
    if config.data_root is None:
        raise RobustDeployError(
            f"dataset {config.name!r} is not built in; pass --data-root DIR (add --download to fetch it)"
        )
    root = Path(config.data_root).expanduser()
    if not config.download and not root.exists():
        raise RobustDeployError(f"--data-root {root} does not exist; point it at the dataset folder")
    return root


def _torchvision(config: DataConfig, cls_name: str, **split_kwargs: dict) -> tuple:
    import torchvision

    root = _require_root(config)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), download=config.download, **split_kwargs["train"])
        test = cls(str(root), download=config.download, **split_kwargs["test"])
    except RuntimeError as exc:
        raise RobustDeployError(
            f"{config.name} not found under {root} ({exc}); fix --data-root or add --download"
        ) from None
    return train, test


def _open_image(path: str):
    """A decoded PIL image; a file that cannot be decoded is one error line naming it."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RobustDeployError(f"cannot read image {path} ({exc}); remove or replace the file") from None
    return image


def _resize(images: list, size: int, channels: int) -> np.ndarray:
    """PIL images -> uint8 (N, C, size, size), bilinear."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        arr = np.asarray(img.convert(mode).resize((size, size), Image.BILINEAR))
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return out


@DATASETS.register("digits")
def digits(config: DataConfig) -> RawData:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn): the built-in default."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 8-bit, like every other dataset
    return RawData(tuple(str(c) for c in range(10)), x, bunch.target)


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _grey(config: DataConfig, cls_name: str, classes: tuple[str, ...]) -> RawData:
    """MNIST-format IDX files from --data-root (as given, or torchvision's `<root>/<cls_name>/raw/`, gzipped or not);
    with only the test files, the 10,000 test images are the pool, split by the seeded fractions (7,000 / 1,500 /
    1,500 by default). `--download` goes through torchvision."""
    if config.download:
        train, test = _torchvision(config, cls_name, train={"train": True}, test={"train": False})
        return RawData(classes, train.data.numpy()[:, None], train.targets.numpy(),
                       test.data.numpy()[:, None], test.targets.numpy())
    root = _require_root(config)
    folder = next((d for d in (root, root / "raw", root / cls_name / "raw") if _idx_path(d, IDX_FILES["test"][0])),
                  None)
    if folder is None:
        raise RobustDeployError(f"{config.name} not found under {root}: no {IDX_FILES['test'][0]}[.gz] there or in "
                                f"{cls_name}/raw/; fix --data-root or add --download")
    x_test, y_test = (_read_idx(folder, name) for name in IDX_FILES["test"])
    if not _idx_path(folder, IDX_FILES["train"][0]):
        return RawData(classes, x_test[:, None], y_test)
    x_train, y_train = (_read_idx(folder, name) for name in IDX_FILES["train"])
    return RawData(classes, x_train[:, None], y_train, x_test[:, None], y_test)


def _idx_path(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _read_idx(folder: Path, name: str) -> np.ndarray:
    """One IDX file (LeCun's format: magic 0x0000 08 D, D big-endian sizes, then uint8 data), checked."""
    import gzip

    path = _idx_path(folder, name)
    if path is None:
        raise RobustDeployError(f"{folder / name}[.gz] is missing; the dataset needs its images and labels")
    try:
        data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except (OSError, EOFError) as exc:
        raise RobustDeployError(f"cannot read {path} ({exc}); replace the file") from None
    dims = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * dims or data[:3] != b"\0\0\x08" or dims not in (1, 3):
        raise RobustDeployError(f"{path} is not an IDX file of uint8 images or labels; replace the file")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * dims)  # writable: torch shares it
    if body.size != int(np.prod(shape)):
        raise RobustDeployError(f"{path} holds {body.size} values, its header says {shape}; replace the file")
    return body.reshape(shape)


@DATASETS.register("mnist")
def mnist(config: DataConfig) -> RawData:
    """MNIST from --data-root (IDX files); validation carved from the official training set where it is there."""
    return _grey(config, "MNIST", tuple(str(c) for c in range(10)))


@DATASETS.register("fashion-mnist")
def fashion_mnist(config: DataConfig) -> RawData:
    """Fashion-MNIST from --data-root (IDX files, MNIST's format)."""
    classes = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
    return _grey(config, "FashionMNIST", classes)


@DATASETS.register("cifar10")
def cifar10(config: DataConfig) -> RawData:
    """torchvision CIFAR-10 from --data-root."""
    train, test = _torchvision(config, "CIFAR10", train={"train": True}, test={"train": False})
    return RawData(tuple(train.classes), train.data.transpose(0, 3, 1, 2), np.asarray(train.targets),
                   test.data.transpose(0, 3, 1, 2), np.asarray(test.targets))


def _gtsrb_csv(path: Path, folder: Path) -> tuple[list[Path], list[int]]:
    """(image paths, class ids) from one of GTSRB's `;`-separated ground-truth CSVs (Filename;...;ClassId)."""
    import csv

    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter=";"))
        return [folder / r["Filename"] for r in rows], [int(r["ClassId"]) for r in rows]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise RobustDeployError(f"cannot read GTSRB ground truth {path} ({exc}); restore the official CSV") from None


@DATASETS.register("gtsrb")
def gtsrb(config: DataConfig) -> RawData:
    """GTSRB (43 traffic-sign classes, seed 000) from --data-root in the official layout
    (Final_Training/Images/000NN/GT-000NN.csv, Final_Test/Images/GT-final_test.csv), resized to --image-size (32)."""
    root = _require_root(config)
    if config.download:
        raise RobustDeployError("gtsrb is read from the official archives unpacked under --data-root; "
                                "drop --download and unpack GTSRB_Final_Training_Images.zip and the test archives")
    train_csvs = sorted((root / "Final_Training" / "Images").glob("000*/GT-000*.csv"))
    test_dir = root / "Final_Test" / "Images"
    test_csv = next((p for p in (test_dir / "GT-final_test.csv", root / "GT-final_test.csv") if p.is_file()), None)
    if not train_csvs or test_csv is None:
        raise RobustDeployError(f"no GTSRB under {root}: need Final_Training/Images/000NN/GT-000NN.csv and "
                                "Final_Test/Images with GT-final_test.csv; fix --data-root")
    size = config.image_size or 32
    paths, labels = [], []
    for csv_path in train_csvs:
        p, y = _gtsrb_csv(csv_path, csv_path.parent)
        paths += p
        labels += y
    test_paths, test_labels = _gtsrb_csv(test_csv, test_dir)
    x = _resize([_open_image(str(p)) for p in paths], size, 3)
    xt = _resize([_open_image(str(p)) for p in test_paths], size, 3)
    return RawData(tuple(str(c) for c in range(43)), x, np.asarray(labels), xt, np.asarray(test_labels))


@dataclass(frozen=True)
class Images:
    """Image files decoded when indexed: `images[index]` gives the pixels (uint8 or float, N, C, H, W) of the files
    at `index` (an integer array), so a pool of files is split and permuted without decoding any."""

    paths: tuple[str, ...]
    decode: Callable[[list[str]], np.ndarray]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return self.decode([self.paths[i] for i in index])


@DATASETS.register("imagefolder")
def imagefolder(config: DataConfig) -> RawData:
    """Any folder of class sub-folders of images (torchvision ImageFolder), listed but not decoded. Its images
    become pixels through `config.preprocessing` (an imported model's); else at their own size when they all
    share one square size (read from the file headers), else resized to --image-size (default 32)."""
    import logging

    import torchvision

    root = _require_root(config)
    try:
        # paths only: nothing decoded yet; empty class folders are fine where the labels map into a model's classes
        folder = torchvision.datasets.ImageFolder(str(root), loader=str, allow_empty=config.classes is not None)
    except (FileNotFoundError, RuntimeError) as exc:
        raise RobustDeployError(f"no image folder at {root}: {exc}") from None
    if len(folder.classes) < 2:
        raise RobustDeployError(f"image folder {root} has one class ({folder.classes[0]}); a classifier needs at "
                                "least two class sub-folders")
    paths = tuple(path for path, _ in folder.samples)
    if config.preprocessing is not None:
        pre = config.preprocessing
        images = Images(paths, lambda chosen: np.stack([pre.image(_open_image(path)) for path in chosen]))
        return RawData(tuple(folder.classes), images, np.asarray(folder.targets))
    channels = 1 if _open_image(paths[0]).mode in ("L", "1", "I;16") else 3
    sizes = {_image_size(path) for path in paths}
    size = config.image_size or (next(iter(sizes))[0] if len(sizes) == 1 and len(set(*sizes)) == 1 else 32)
    if sizes != {(size, size)}:
        logging.getLogger("robustdeploy").info("resizing the images of %s to %dx%d", root, size, size)
    images = Images(paths, lambda chosen: _resize([_open_image(path) for path in chosen], size, channels))
    return RawData(tuple(folder.classes), images, np.asarray(folder.targets))


def _image_size(path: str) -> tuple[int, int]:
    """An image's size from its header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RobustDeployError(f"cannot read image {path} ({exc}); remove or replace the file") from None
