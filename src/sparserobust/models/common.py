"""Pieces every model shares: the in-model input normalisation and a residual block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Maps [0,1] pixels to ``(x - mean) / std`` per channel, inside the model.

    Keeping normalisation in the model means every attack works in the [0,1]
    box and perturbation norms are measured in [0,1] pixel space.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Residual(nn.Module):
    """``branch(x) + shortcut(x)``: a residual block from any branch and a linear shortcut
    (None: the identity). The verifiers bound it (:mod:`sparserobust.verify.network`)
    when ``branch`` is built from the modules they support and ``shortcut`` has no
    nonlinear op."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)
