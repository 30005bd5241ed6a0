"""Shared fixtures: embedded digits data, small trained models, the real-MNIST root."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from sparserobust.data import Dataset, load_dataset
from sparserobust.models import build_model
from sparserobust.training import TrainSettings, train_model

# Under mutation testing (`make mutation`, docs/testing.md) mutmut runs pytest once per
# mutant in a process forked from one that already ran the tests; there the trained
# fixtures below are kept from that first run instead of being retrained for every
# mutant. What they build (data, models, natural training) is not mutated. A normal
# pytest run builds each of them once per session, as before.
_MUTATION_RUN = "MUTANT_UNDER_TEST" in os.environ
_kept: dict[str, object] = {}
T = TypeVar("T")


def kept(key: str, build: Callable[[], T]) -> T:
    """``build()``, or under mutation testing the value the first call built."""
    if not _MUTATION_RUN:
        return build()
    if key not in _kept:
        _kept[key] = build()
    return _kept[key]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's 8x8 digits: 1433 train / 364 test images in [0,1]."""
    return kept("digits", lambda: load_dataset("digits"))


@pytest.fixture(scope="session")
def digits_lenet300(digits: Dataset) -> torch.nn.Module:
    """LeNet-300-100 trained 10 epochs on digits (about 96-97% test accuracy), eval mode."""

    def build() -> torch.nn.Module:
        info = digits.info
        torch.manual_seed(0)  # the initial weights must not depend on which tests ran first
        model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
        train_model(model, digits.train, TrainSettings(epochs=10, seed=0), progress=False)
        return model.eval()

    return kept("digits_lenet300", build)


@pytest.fixture(scope="session")
def digits_linear(digits: Dataset) -> torch.nn.Module:
    """Softmax regression trained 10 epochs on digits, eval mode."""

    def build() -> torch.nn.Module:
        info = digits.info
        torch.manual_seed(0)
        model = build_model("linear", info.input_shape, info.num_classes, info.mean, info.std)
        train_model(
            model, digits.train, TrainSettings(epochs=10, seed=0, weight_decay=0.0), progress=False
        )
        return model.eval()

    return kept("digits_linear", build)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real-MNIST data root from $SPARSEROBUST_DATA; skips the test when unset."""
    root = os.environ.get("SPARSEROBUST_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not available: set SPARSEROBUST_DATA to a root holding MNIST/raw")
    return Path(root)
