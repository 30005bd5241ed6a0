"""Dataset registry: MNIST, Fashion-MNIST, CIFAR-10 and scikit-learn's digits.

A dataset is one entry of :data:`DATASETS` (:class:`DatasetEntry`): its facts (input
shape, classes, pixel statistics), its loader and the size of its test set. A new
dataset is a loader function plus one entry; nothing else names datasets.

Every dataset is returned as float32 tensors with pixels in [0, 1] (shape
``N x C x H x W``) and int64 labels. Normalisation statistics are *not*
applied here: models carry them inside (``models.Normalize``), so attacks
work in the [0, 1] box.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparserobust.errors import DataError
from sparserobust.registry import lookup

log = logging.getLogger(__name__)

DATA_ENV = "SPARSEROBUST_DATA"
NO_DOWNLOAD_ENV = "SPARSEROBUST_NO_DOWNLOAD"


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape of one input, classes, pixel statistics."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Split:
    """One split of a dataset: ``x`` float32 in [0,1] (N,C,H,W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n])

    def window(self, start: int, n: int | None) -> Split:
        """``n`` examples from index ``start`` on (fewer at the end; all from ``start``
        when ``n`` is None)."""
        if start == 0:
            return self.head(n)
        stop = len(self) if n is None else start + n
        return Split(self.x[start:stop], self.y[start:stop])


@dataclass
class Dataset:
    """A dataset's info with its train and test splits."""

    info: DatasetInfo
    train: Split
    test: Split


Loader = Callable[[Path | None], tuple[Split, Split]]
"""``load(root) -> (train, test)``: a dataset's splits from the data root (None: the
download cache), pixels in [0,1]."""


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its facts, its loader and ``test_size``, the number of test
    images (the binomial ``n`` behind a clean accuracy's interval)."""

    info: DatasetInfo
    load: Loader
    test_size: int


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name``; ConfigError naming the choices otherwise."""
    return lookup(DATASETS, name, "dataset")


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name``; raises ConfigError for an unknown name."""
    return dataset_entry(name).info


def dataset_test_size(name: str) -> int:
    """How many test images dataset ``name`` has; ConfigError for an unknown name."""
    return dataset_entry(name).test_size


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data root: the explicit argument, else ``$SPARSEROBUST_DATA``, else None."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def _default_download_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparserobust" / "data"


def _missing(name: str, root: Path | None, why: str) -> DataError:
    where = f" in {root}" if root is not None else ""
    return DataError(
        f"dataset {name!r} not found{where} and {why}: pass --data-dir DIR "
        f"(or set {DATA_ENV}=DIR) pointing at a folder in torchvision's layout"
    )


def _to_split(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> Split:
    """uint8 images (N,H,W) or (N,H,W,C) -> float (N,C,H,W)/255; labels -> int64."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise DataError(f"expected uint8 images, got {x.dtype}: the data files look corrupt")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    x = x.contiguous().float().div_(255.0)
    y = torch.as_tensor(np.asarray(labels)).long()
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{x.shape[0]} images but {y.shape[0]} labels: the data files look corrupt")
    return Split(x, y)


def _download_allowed() -> bool:
    return os.environ.get(NO_DOWNLOAD_ENV, "") not in ("1", "true", "yes")


def _with_download(
    name: str,
    root: Path | None,
    present: Callable[[Path], bool],
    fetch: Callable[[Path], None],
) -> Path:
    """Return a root holding ``name``: the given one, or download into a root."""
    if root is not None and present(root):
        return root
    if root is not None and not root.exists():
        raise _missing(name, root, "that folder does not exist")
    target = root if root is not None else _default_download_root()
    if present(target):
        return target
    if not _download_allowed():
        raise _missing(name, root, f"downloading is disabled ({NO_DOWNLOAD_ENV} is set)")
    log.info("downloading %s into %s", name, target)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        target.mkdir(parents=True, exist_ok=True)
        fetch(target)
    except Exception as exc:  # network errors come in many types
        raise _missing(name, root, f"downloading it failed ({type(exc).__name__})") from None
    finally:
        socket.setdefaulttimeout(old)
    if not present(target):
        raise _missing(name, root, "the download did not produce it")
    return target


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _load_mnist_like(name: str, root: Path | None) -> tuple[Split, Split]:
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    folder = cls.__name__

    def present(r: Path) -> bool:
        raw = r / folder / "raw"
        return all((raw / f).is_file() or (raw / (f + ".gz")).is_file() for f in _IDX_FILES)

    def fetch(r: Path) -> None:
        cls(str(r), train=True, download=True)
        cls(str(r), train=False, download=True)

    base = _with_download(name, root, present, fetch)
    try:
        train = cls(str(base), train=True, download=False)
        test = cls(str(base), train=False, download=False)
    except Exception as exc:
        raise DataError(
            f"cannot read {name} from {base / folder / 'raw'} ({exc}): "
            "replace the idx files with intact ones"
        ) from None
    return _to_split(train.data, train.targets), _to_split(test.data, test.targets)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: data files never run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(
            f"refusing to unpickle {module}.{name} from a CIFAR-10 batch file: "
            "the file is not a CIFAR-10 batch; replace it"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read CIFAR-10 batch {path} ({type(exc).__name__}: {exc}): replace the file"
        ) from None
    return data, labels


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def _load_cifar10(root: Path | None) -> tuple[Split, Split]:
    folder = "cifar-10-batches-py"

    def present(r: Path) -> bool:
        return all((r / folder / f).is_file() for f in _CIFAR_TRAIN + _CIFAR_TEST)

    def fetch(r: Path) -> None:
        import torchvision

        torchvision.datasets.CIFAR10(str(r), train=True, download=True)

    base = _with_download("cifar10", root, present, fetch) / folder
    splits = []
    for files in (_CIFAR_TRAIN, _CIFAR_TEST):
        parts = [_read_cifar_batch(base / f) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"CIFAR-10 labels outside 0..9 in {base}: replace the files")
        splits.append(Split(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels)))
    return splits[0], splits[1]


def _load_digits(root: Path | None = None) -> tuple[Split, Split]:
    """scikit-learn's digits (bundled: ``root`` is not used)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    # Deterministic stratified split: every 5th example of each class is test.
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        test_mask[idx[::5]] = True
    return Split(x[~test_mask], y[~test_mask]), Split(x[test_mask], y[test_mask])


DATASETS: dict[str, DatasetEntry] = {
    "mnist": DatasetEntry(
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
        functools.partial(_load_mnist_like, "mnist"),
        10_000,
    ),
    "fashion-mnist": DatasetEntry(
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
        functools.partial(_load_mnist_like, "fashion-mnist"),
        10_000,
    ),
    "cifar10": DatasetEntry(
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        _load_cifar10,
        10_000,
    ),
    "digits": DatasetEntry(
        DatasetInfo("digits", (1, 8, 8), 10, (0.3050,), (0.3779,)), _load_digits, 364
    ),
}
"""Every dataset by name: the one place a dataset is registered."""


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load dataset ``name`` with both splits, pixels in [0,1].

    ``data_dir`` (or ``$SPARSEROBUST_DATA``) is a torchvision-layout root, e.g.
    ``../shared/data`` holding ``MNIST/raw/``. Without one, torchvision
    downloads into ``~/.cache/sparserobust/data`` when online. ``digits`` needs
    neither. Raises :class:`DataError` with what to do when data is missing.
    """
    entry = dataset_entry(name)
    info = entry.info
    train, test = entry.load(resolve_data_dir(data_dir))
    for split in (train, test):
        if tuple(split.x.shape[1:]) != info.input_shape:
            raise DataError(
                f"{name} images have shape {tuple(split.x.shape[1:])}, expected "
                f"{info.input_shape}: the data files look corrupt"
            )
        if len(split.y) and (int(split.y.min()) < 0 or int(split.y.max()) >= info.num_classes):
            raise DataError(
                f"{name} labels outside 0..{info.num_classes - 1} (found {int(split.y.min())}.."
                f"{int(split.y.max())}): the data files look corrupt; replace them"
            )
    log.info("loaded %s: %d train, %d test", name, len(train), len(test))
    return Dataset(info, train, test)
