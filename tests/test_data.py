import pytest
import torch

from robustdeploy.data import DataConfig, load_dataset, load_test_samples
from robustdeploy.errors import RobustDeployError


def test_digits_is_built_in_pixels_in_unit_range(digits):
    assert digits.input_shape == (1, 8, 8)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert torch.equal(split.x, torch.round(split.x * 255) / 255)  # on the 8-bit grid
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.classes) == 10


def test_splits_are_deterministic_and_disjoint():
    a, b = load_dataset(DataConfig(seed=3)), load_dataset(DataConfig(seed=3))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.val.y, b.val.y)
    c = load_dataset(DataConfig(seed=4))
    assert not torch.equal(a.test.x, c.test.x)
    # the three splits partition the original samples: same multiset of images, no sample twice
    from sklearn.datasets import load_digits

    weights = torch.arange(1, 65, dtype=torch.float64)
    keys = torch.cat([s.x.flatten(1).double() @ weights for s in (a.train, a.val, a.test)]).sort().values
    pixels = (load_digits().images.reshape(-1, 64) * 255 / 16).round() / 255
    original = (torch.from_numpy(pixels) @ weights).sort().values
    assert torch.allclose(keys, original)


def test_unknown_dataset_and_missing_root():
    with pytest.raises(RobustDeployError, match="did you mean 'mnist'"):
        load_dataset(DataConfig(name="mnsit"))
    with pytest.raises(RobustDeployError, match="--data-root"):
        load_dataset(DataConfig(name="mnist"))
    with pytest.raises(RobustDeployError, match="does not exist"):
        load_dataset(DataConfig(name="cifar10", data_root="/nonexistent/path"))


def test_imagefolder_loads_and_resizes(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (20 + i, 17), (i * 20, 40, 80)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path), image_size=12, val_fraction=0.2,
                                   test_fraction=0.2))
    assert data.classes == ("cat", "dog")
    assert data.input_shape == (3, 12, 12)
    assert len(data.train) + len(data.val) + len(data.test) == 20


def test_imagefolder_keeps_a_shared_size_and_names_bad_input(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.new("L", (12, 12), i * 30).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path), val_fraction=0.2,
                                   test_fraction=0.2))
    assert data.input_shape == (1, 12, 12)  # the images' own size, not a silent 32x32
    (tmp_path / "b" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    with pytest.raises(RobustDeployError, match="cannot read image .*5.png"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(tmp_path)))
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("L", (12, 12)).save(one / "only" / "0.png")
    with pytest.raises(RobustDeployError, match="has one class"):
        load_dataset(DataConfig(name="imagefolder", data_root=str(one)))


def test_test_samples_are_the_test_split_read_a_range_at_a_time(tmp_path, monkeypatch):
    from PIL import Image

    import robustdeploy.data as data_module

    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.new("RGB", (10, 10), (i * 20, len(cls) * 60, 7 * i)).save(tmp_path / cls / f"{i}.png")
    config = DataConfig(name="imagefolder", data_root=str(tmp_path), test_fraction=0.4, seed=5)
    whole = load_dataset(config).test
    decoded: list[int] = []
    opener = data_module._open_image
    monkeypatch.setattr(data_module, "_open_image", lambda path: decoded.append(1) or opener(path))
    samples = load_test_samples(config)
    decoded.clear()
    assert samples.shape == (3, 10, 10) and torch.equal(samples.y, whole.y)
    part = samples.part(3, 9)
    assert torch.equal(part.read(1, 4), whole.x[4:7]) and len(decoded) == 3  # only the samples asked for
    assert torch.equal(samples.head(5).load().x, whole.x[:5])
    assert torch.equal(load_test_samples(DataConfig(seed=2)).load().x, load_dataset(DataConfig(seed=2)).test.x)


def _write_idx(path, array, gz=True):
    import gzip

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    (gzip.open if gz else open)(path, "wb").write(header + array.tobytes())


def test_mnist_idx_files_test_set_only_and_official(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (100, 28, 28)), rng.integers(0, 10, 100)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    pool = load_dataset(DataConfig(name="mnist", data_root=str(tmp_path), seed=1))
    assert (len(pool.train), len(pool.val), len(pool.test)) == (70, 15, 15)  # the test files split 70/15/15
    assert pool.input_shape == (1, 28, 28) and torch.equal(load_test_samples(DataConfig(
        name="mnist", data_root=str(tmp_path), seed=1)).load().x, pool.test.x)
    raw = tmp_path / "MNIST" / "raw"  # torchvision's layout, not gzipped, with the training files
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", images[:20], gz=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[:20], gz=False)
    _write_idx(raw / "train-images-idx3-ubyte", images, gz=False)
    _write_idx(raw / "train-labels-idx1-ubyte", labels, gz=False)
    official = load_dataset(DataConfig(name="mnist", data_root=str(tmp_path / "MNIST")))
    assert len(official.test) == 20 and len(official.train) + len(official.val) == 100
    assert torch.equal(official.test.x[3, 0], torch.from_numpy(images[3]).float() / 255)
    resized = load_dataset(DataConfig(name="mnist", data_root=str(tmp_path / "MNIST"), image_size=32))
    assert resized.input_shape == (1, 32, 32) and resized.test.x.shape == (20, 1, 32, 32)  # every split, every pool
    assert load_test_samples(DataConfig(name="mnist", data_root=str(tmp_path / "MNIST"), image_size=32)).shape == \
        (1, 32, 32)
    assert torch.equal(resized.test.x, (resized.test.x * 255).round() / 255)  # still 8-bit pixels
    with pytest.raises(RobustDeployError, match="--image-size must be at least 1"):
        DataConfig(name="mnist", image_size=0)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x09abc")  # header says 9, holds 3
    with pytest.raises(RobustDeployError, match="holds 3 values"):
        load_dataset(DataConfig(name="mnist", data_root=str(tmp_path / "MNIST")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustDeployError, match="no t10k-images-idx3-ubyte"):
        load_dataset(DataConfig(name="fashion-mnist", data_root=str(tmp_path / "empty")))
