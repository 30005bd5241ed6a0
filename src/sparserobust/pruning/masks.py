"""Masks and exact sparsity accounting for Linear and Conv layers.

Sparsity counts the weights of ``nn.Linear`` and ``nn.Conv*d`` layers only;
biases and BatchNorm parameters are excluded (every report says so). A weight
counts as pruned when its ``torch.nn.utils.prune`` mask is 0, or, for a layer
without a mask, when it is exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from sparserobust.errors import ConfigError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SPARSITY_NOTE = "sparsity = fraction of Linear/Conv weights removed; biases and BatchNorm excluded"


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


def is_masked(module: nn.Module) -> bool:
    """True when ``module.weight`` carries a ``torch.nn.utils.prune`` mask."""
    return isinstance(getattr(module, "weight_mask", None), torch.Tensor) and hasattr(
        module, "weight_orig"
    )


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor: ``weight_orig`` for a masked layer, else ``weight``.

    For magnitude and random pruning its pruned entries are 0; Dynamic Network
    Surgery keeps training them (they are the "dense" weights it may splice back).
    """
    weight = getattr(module, "weight_orig", None) if is_masked(module) else module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses: ``weight_orig * weight_mask`` (or ``weight``)."""
    if is_masked(module):
        return dense_weight(module) * weight_mask(module)
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in [0, 1); ConfigError otherwise."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ConfigError(
            f"sparsity must be in [0, 1) (fraction of weights removed), got {sparsity!r}"
        )
    return value


def pruned_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights a target ``sparsity`` removes: round half up."""
    return min(total, int(math.floor(check_sparsity(sparsity) * total + 0.5)))


@torch.no_grad()
def set_weight_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Give ``module.weight`` the 0/1 ``mask`` (same shape) as a ``prune`` custom mask.

    The first call reparametrises the layer with ``prune.custom_from_mask``;
    later calls overwrite the mask buffer in place, so a weight can also be
    spliced back (a plain second ``custom_from_mask`` could only remove more).
    """
    if not isinstance(module, PRUNABLE_TYPES):
        raise ConfigError(f"only Linear/Conv layers can be masked, got {type(module).__name__}")
    weight = dense_weight(module)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(
            f"mask shape {tuple(mask.shape)} does not fit weight shape {tuple(weight.shape)}"
        )
    mask = (mask != 0).to(device=weight.device, dtype=weight.dtype)
    if is_masked(module):
        weight_mask(module).copy_(mask)
        refresh_pruned_weight(module)
    else:
        prune.custom_from_mask(module, "weight", mask)


def _pruning_hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    """The module's ``torch.nn.utils.prune`` hooks (one per pruned tensor: weight, bias)."""
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


@torch.no_grad()
def refresh_pruned_weight(module: nn.Module) -> None:
    """Recompute the cached ``module.weight`` from ``weight_orig`` and the mask.

    ``prune`` recomputes it before every forward; this makes it right at once
    (after loading a state dict or changing a mask) for code that reads
    ``module.weight`` without a forward pass. It also drops the autograd graph
    a forward pass with gradients leaves in ``module.weight``, which otherwise
    makes ``copy.deepcopy(model)`` fail. A masked bias (structured pruning
    removes whole units, bias included) is refreshed the same way.
    """
    for hook in _pruning_hooks(module):
        setattr(module, hook._tensor_name, hook.apply_mask(module))


def refresh_pruned_weights(model: nn.Module) -> None:
    """:func:`refresh_pruned_weight` for every masked layer of ``model``."""
    for _, module in prunable_layers(model):
        refresh_pruned_weight(module)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the 0/1 keep-masks of every prunable layer, by layer name."""
    return {name: weight_mask(module).detach().clone() for name, module in prunable_layers(model)}


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set the keep-mask of each named layer (see :func:`set_weight_mask`)."""
    layers = dict(prunable_layers(model))
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ConfigError(f"masks for unknown layers {unknown}: the model has {sorted(layers)}")
    for name, mask in masks.items():
        set_weight_mask(layers[name], mask)


@torch.no_grad()
def zero_pruned_weights(model: nn.Module) -> None:
    """Set pruned entries of every ``weight_orig`` to exactly 0.

    The forward pass never sees them (``prune`` multiplies by the mask and
    their gradient is 0), but zeroing them also keeps weight decay and
    momentum from doing anything with stale values, and makes the stored
    ``weight_orig`` equal to the pruned weight.
    """
    for _, module in prunable_layers(model):
        if is_masked(module):
            dense_weight(module).mul_(weight_mask(module))
            refresh_pruned_weight(module)


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove the ``prune`` reparametrisation: each masked layer gets a plain
    ``weight`` parameter equal to ``weight_orig * mask`` (pruned entries 0), and
    a plain ``bias`` likewise where the bias is masked.

    Returns ``model`` (changed in place). Sparsity is then counted from zeros.
    """
    for _, module in prunable_layers(model):
        for hook in _pruning_hooks(module):
            prune.remove(module, hook._tensor_name)
    return model


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
                layer.name: {
                    "total": layer.total,
                    "pruned": layer.pruned,
                    "sparsity": layer.sparsity,
                }
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
