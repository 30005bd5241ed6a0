"""Dataset registry: digits split, tiny MNIST idx files, tiny CIFAR-10 pickles, errors."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparserobust.data import dataset_info, load_dataset
from sparserobust.errors import ConfigError, DataError


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(
        struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()
    )


def make_tiny_mnist(root: Path, folder: str = "MNIST", n_train: int = 12, n_test: int = 5) -> tuple:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tr_x = rng.integers(0, 256, (n_train, 28, 28))
    te_x = rng.integers(0, 256, (n_test, 28, 28))
    tr_y, te_y = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    write_idx_images(raw / "train-images-idx3-ubyte", tr_x)
    write_idx_labels(raw / "train-labels-idx1-ubyte", tr_y)
    write_idx_images(raw / "t10k-images-idx3-ubyte", te_x)
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", te_y)
    return tr_x, tr_y, te_x, te_y


def make_tiny_cifar(root: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(base / name, "wb") as fh:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, fh)
        if first is None:
            first = (data, np.array(labels))
    assert first is not None
    return first


def test_digits_split_is_deterministic_and_in_box() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.test)) == (1433, 364)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.train.x.min() == 0.0 and a.train.x.max() == 1.0
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    # stratified: every class is in the test split with about a fifth of its examples
    counts = torch.bincount(a.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_reads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    tr_x, tr_y, te_x, te_y = make_tiny_mnist(tmp_path, folder)
    data = load_dataset(name, tmp_path)
    assert data.train.x.shape == (12, 1, 28, 28) and data.test.x.shape == (5, 1, 28, 28)
    assert torch.allclose(data.train.x[:, 0], torch.tensor(tr_x / 255.0, dtype=torch.float32))
    assert data.test.y.tolist() == te_y.tolist()


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tiny_mnist(tmp_path)
    monkeypatch.setenv("SPARSEROBUST_DATA", str(tmp_path))
    assert len(load_dataset("mnist").train) == 12


def test_cifar10_reads_pickled_batches(tmp_path: Path) -> None:
    data0, labels0 = make_tiny_cifar(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.train.x.shape == (20, 3, 32, 32) and data.test.x.shape == (4, 3, 32, 32)
    expected = torch.tensor(data0.reshape(-1, 3, 32, 32) / 255.0, dtype=torch.float32)
    assert torch.allclose(data.train.x[:4], expected)
    assert data.train.y[:4].tolist() == labels0.tolist()


def test_cifar10_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    make_tiny_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": Payload(), "labels": [0]}, fh)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_missing_data_names_both_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEROBUST_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match=r"--data-dir.*SPARSEROBUST_DATA"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")


def test_truncated_idx_file_is_a_data_error(tmp_path: Path) -> None:
    make_tiny_mnist(tmp_path)
    f = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        dataset_info("imagenet")


@pytest.mark.slow
def test_real_mnist(mnist_root: Path) -> None:
    data = load_dataset("mnist", mnist_root)
    assert (len(data.train), len(data.test)) == (60_000, 10_000)
    assert data.train.y[:5].tolist() == [5, 0, 4, 1, 9]  # the published order
    assert data.test.y[:3].tolist() == [7, 2, 1]
    assert torch.bincount(data.test.y).tolist()[:3] == [980, 1135, 1032]
    assert data.train.x.min() == 0.0 and data.train.x.max() == 1.0


def test_a_dataset_is_one_registry_entry_with_its_test_size() -> None:
    """Each entry carries its facts, loader and test-set size; the size is the real one
    (digits here; MNIST and Fashion-MNIST too where their files are present)."""
    from sparserobust import data

    assert data.dataset_names() == sorted(data.DATASETS)
    assert {n: data.dataset_test_size(n) for n in data.dataset_names()} == {
        "cifar10": 10000,
        "digits": 364,
        "fashion-mnist": 10000,
        "mnist": 10000,
    }
    assert len(load_dataset("digits").test) == data.dataset_test_size("digits")
    root = data.resolve_data_dir(None)
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        if root is not None and (root / folder / "raw").is_dir():
            assert len(load_dataset(name, root).test) == data.dataset_test_size(name)
    with pytest.raises(ConfigError, match="choose one of"):
        data.dataset_test_size("imagenet")
