"""LeNet-300-100 (784-300-100-10 MLP) and LeNet-5 in its Caffe form."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

from sparserobust.errors import ModelError
from sparserobust.models.common import Normalize


def lenet300(
    input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Sequential:
    """LeNet-300-100: flatten, fc 300, ReLU, fc 100, ReLU, fc ``num_classes``."""
    return nn.Sequential(
        Normalize(mean, std),
        nn.Flatten(),
        nn.Linear(prod(input_shape), 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def lenet5(
    input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Sequential:
    """LeNet-5 as in Caffe (Han et al. 2015, DNS): conv 20@5x5, maxpool 2,
    conv 50@5x5, maxpool 2, fc 500, ReLU, fc ``num_classes``."""
    c, h, w = input_shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if fh < 1 or fw < 1:
        raise ModelError(
            f"lenet5 needs inputs of at least 16x16 pixels, got {h}x{w}: "
            "use lenet300 or linear for this dataset"
        )
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(c, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * fh * fw, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
