"""Random pruning: the control that separates "sparse" from "pruned by magnitude".

Every Linear/Conv layer loses the same number of weights as layer-wise
magnitude pruning (``round(s * n)``, or per-layer rates given explicitly),
but which weights go is drawn uniformly at random among those still kept.
Already pruned weights stay pruned, so rising targets give nested masks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.pruning.base import OneShotMethod
from sparserobust.pruning.magnitude import layer_counts, prune_by_scores
from sparserobust.pruning.masks import (
    SparsityReport,
    check_sparsity,
    dense_weight,
    prunable_layers,
    pruned_count,
    sparsity_report,
    weight_mask,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def random_prune(
    model: nn.Module,
    sparsity: float,
    *,
    seed: int = 0,
    layer_rates: Mapping[str, float] | None = None,
) -> SparsityReport:
    """Remove uniformly random weights: ``round(rate * n)`` per layer.

    ``rate`` is ``sparsity`` for every layer unless ``layer_rates`` (layer name
    -> fraction removed, e.g. the rates a global-magnitude run produced) says
    otherwise. ``seed`` fixes the draw (a private generator; global RNG
    untouched). Returns the exact counts.
    """
    check_sparsity(sparsity)
    counts = layer_counts(model, sparsity)
    if layer_rates is not None:
        layers = dict(prunable_layers(model))
        unknown = sorted(set(layer_rates) - set(layers))
        if unknown:
            raise ConfigError(f"layer_rates names unknown layers {unknown}")
        for name, rate in layer_rates.items():
            counts[name] = pruned_count(dense_weight(layers[name]).numel(), rate)
    gen = torch.Generator().manual_seed(int(seed))
    scores: dict[str, torch.Tensor] = {}
    for name, module in prunable_layers(model):
        kept = weight_mask(module).flatten().cpu() != 0
        already = int((~kept).sum())
        if counts[name] < already:
            raise ConfigError(
                f"random cannot lower sparsity: layer {name} already has {already} pruned "
                "weights; start from a denser checkpoint"
            )
        draw = torch.rand(kept.numel(), generator=gen)
        draw[~kept] = -1.0
        scores[name] = draw.to(weight_mask(module).device)
    prune_by_scores(model, scores, counts)
    report = sparsity_report(model)
    log.info("random: sparsity %.4f (%d/%d)", report.sparsity, report.pruned, report.total)
    return report


class RandomMethod(OneShotMethod):
    """``random`` (a control): :func:`random_prune` at the layer-wise rates."""

    name = "random"
    description = "random pruning (control): uniform random masks at the layer-wise rates"

    def prune_once(self, model: nn.Module, level: float, seed: int, settings: object) -> None:
        random_prune(model, level, seed=seed)
