"""Masks and exact sparsity accounting for Linear and Conv layers.

Sparsity counts the weights of ``nn.Linear`` and ``nn.Conv*d`` layers only;
biases and BatchNorm parameters are excluded (every report says so). A weight
counts as pruned when its ``torch.nn.utils.prune`` mask is 0, or, for a layer
without a mask, when it is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SPARSITY_NOTE = (
    "sparsity = fraction of Linear/Conv weights removed; biases and BatchNorm excluded"
)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv layer, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def weight_mask(module: nn.Module) -> torch.Tensor:
    """The layer's 0/1 keep-mask: its prune mask, else ``weight != 0``."""
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor):
        return mask
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return (weight != 0).to(weight.dtype)


@dataclass
class LayerSparsity:
    """Counts for one layer: ``total`` weights, ``pruned`` of them removed."""

    name: str
    total: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total if self.total else 0.0


@dataclass
class SparsityReport:
    """Per-layer and total counts of removed Linear/Conv weights."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def pruned(self) -> int:
        return sum(layer.pruned for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "sparsity": self.sparsity,
            "pruned": self.pruned,
            "total": self.total,
            "layers": {
                layer.name: {"total": layer.total, "pruned": layer.pruned,
                             "sparsity": layer.sparsity}
                for layer in self.layers
            },
            "note": SPARSITY_NOTE,
        }


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Exact counts of removed weights per Linear/Conv layer and in total."""
    report = SparsityReport()
    for name, module in prunable_layers(model):
        mask = weight_mask(module)
        report.layers.append(LayerSparsity(name, int(mask.numel()), int((mask == 0).sum())))
    return report
