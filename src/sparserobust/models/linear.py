"""Softmax regression: a single Linear layer on the flattened, normalised input."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

from sparserobust.models.common import Normalize


def linear(
    input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Sequential:
    """Linear classifier f(x) = W (x - mean)/std + b; logits, trained with softmax CE."""
    return nn.Sequential(
        Normalize(mean, std), nn.Flatten(), nn.Linear(prod(input_shape), num_classes)
    )
