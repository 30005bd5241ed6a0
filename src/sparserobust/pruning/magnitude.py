"""Magnitude pruning (Han et al. 2015): layer-wise and global thresholds on |W|.

``magnitude_prune`` removes the same fraction of weights from every
Linear/Conv layer (the smallest |W| of each layer); ``global_magnitude_prune``
removes the smallest |W| across all layers together (one threshold). Both
count exactly: a target sparsity ``s`` removes ``round(s * n)`` weights (per
layer, resp. in total). Weights already pruned stay pruned (they rank first),
so repeated calls with rising ``s`` give nested masks, as iterative pruning
with retraining (Han et al.) needs. Pruned entries of ``weight_orig`` are set
to exactly 0.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.pruning.base import OneShotMethod
from sparserobust.pruning.masks import (
    SparsityReport,
    check_sparsity,
    dense_weight,
    effective_weight,
    prunable_layers,
    pruned_count,
    set_weight_mask,
    sparsity_report,
    weight_mask,
    zero_pruned_weights,
)

log = logging.getLogger(__name__)


def _magnitude_scores(module: nn.Module) -> torch.Tensor:
    """|W| of the layer's effective weight, with already pruned entries at -1."""
    scores = effective_weight(module).detach().abs().flatten().clone()
    scores[weight_mask(module).flatten() == 0] = -1.0
    return scores


def mask_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 keep-mask (flat, like ``scores``) removing the ``k`` lowest scores.

    Ties are broken by position (stable sort), so the result is deterministic.
    """
    mask = torch.ones_like(scores)
    if k > 0:
        order = torch.argsort(scores, stable=True)
        mask[order[:k]] = 0.0
    return mask


def layer_counts(model: nn.Module, sparsity: float) -> dict[str, int]:
    """Weights to remove per layer for layer-wise pruning: ``round(s * n_layer)``."""
    return {
        name: pruned_count(dense_weight(module).numel(), sparsity)
        for name, module in prunable_layers(model)
    }


def global_counts(
    model: nn.Module, sparsity: float, scores: dict[str, torch.Tensor]
) -> dict[str, int]:
    """Weights to remove per layer under one global threshold on ``scores``.

    Exactly ``round(s * N)`` in total (N = all Linear/Conv weights), ties
    broken by layer order then position.
    """
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float().cpu() for n in names])
    k = pruned_count(flat.numel(), sparsity)
    removed = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        removed[torch.argsort(flat, stable=True)[:k]] = True
    counts: dict[str, int] = {}
    start = 0
    for n in names:
        size = scores[n].numel()
        counts[n] = int(removed[start : start + size].sum())
        start += size
    return counts


@torch.no_grad()
def prune_by_scores(
    model: nn.Module, scores: dict[str, torch.Tensor], counts: dict[str, int]
) -> None:
    """Mask every layer named in ``counts``, removing its ``counts[name]`` lowest scores."""
    layers = dict(prunable_layers(model))
    for name, k in counts.items():
        module = layers[name]
        shape = dense_weight(module).shape
        set_weight_mask(module, mask_smallest(scores[name], k).reshape(shape))
    zero_pruned_weights(model)


def _check_not_unpruning(model: nn.Module, counts: dict[str, int], method: str) -> None:
    for name, module in prunable_layers(model):
        already = int((weight_mask(module) == 0).sum())
        if counts[name] < already:
            raise ConfigError(
                f"{method} cannot lower sparsity: layer {name} already has {already} pruned "
                f"weights and the target keeps only {counts[name]} pruned; start from a "
                "denser checkpoint or use dns (which can splice weights back)"
            )


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> SparsityReport:
    """Layer-wise magnitude pruning: remove ``round(s * n)`` smallest-|W| weights in
    every Linear/Conv layer (already pruned ones first). Returns the exact counts."""
    check_sparsity(sparsity)
    counts = layer_counts(model, sparsity)
    _check_not_unpruning(model, counts, "magnitude")
    scores = {name: _magnitude_scores(m) for name, m in prunable_layers(model)}
    prune_by_scores(model, scores, counts)
    report = sparsity_report(model)
    log.info("magnitude: sparsity %.4f (%d/%d)", report.sparsity, report.pruned, report.total)
    return report


@torch.no_grad()
def global_magnitude_prune(model: nn.Module, sparsity: float) -> SparsityReport:
    """Global magnitude pruning: remove the ``round(s * N)`` smallest |W| over all
    Linear/Conv layers (one threshold; already pruned ones first)."""
    check_sparsity(sparsity)
    scores = {name: _magnitude_scores(m) for name, m in prunable_layers(model)}
    counts = global_counts(model, sparsity, scores)
    _check_not_unpruning(model, counts, "global-magnitude")
    prune_by_scores(model, scores, counts)
    report = sparsity_report(model)
    log.info(
        "global-magnitude: sparsity %.4f (%d/%d)", report.sparsity, report.pruned, report.total
    )
    return report


class MagnitudeMethod(OneShotMethod):
    """``magnitude``: :func:`magnitude_prune`, every layer to the same rate."""

    name = "magnitude"
    description = "layer-wise magnitude pruning (Han et al. 2015): every layer to the same rate"

    def prune_once(self, model: nn.Module, level: float, seed: int, settings: object) -> None:
        magnitude_prune(model, level)


class GlobalMagnitudeMethod(OneShotMethod):
    """``global-magnitude``: :func:`global_magnitude_prune`, one threshold across layers."""

    name = "global-magnitude"
    description = "global magnitude pruning: one |W| threshold across all layers"

    def prune_once(self, model: nn.Module, level: float, seed: int, settings: object) -> None:
        global_magnitude_prune(model, level)
