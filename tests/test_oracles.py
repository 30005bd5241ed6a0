"""Oracle tests that could fail: magnitude pruning removes exactly the smallest weights
(per layer, or globally), counted exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparserobust.pruning import prune_model, sparsity_report
from sparserobust.pruning.masks import prunable_layers, weight_mask


def distinct_model(seed: int = 0) -> nn.Module:
    """Two linear layers whose weights have distinct magnitudes, on different scales
    (layer-wise and global pruning then choose different weights)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    with torch.no_grad():
        for scale, layer in ((1.0, model[1]), (0.05, model[3])):
            n = layer.weight.numel()
            values = (torch.randperm(n).float() + 1.0) * scale / n
            signs = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
            layer.weight.copy_((values * signs).view_as(layer.weight))
    return model


def kept_and_pruned(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    out = []
    for _, module in prunable_layers(model):
        w = module.weight_orig.detach().abs().flatten()
        mask = weight_mask(module).flatten().bool()
        out.append((w[mask], w[~mask], w.numel()))
    return out


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layerwise_magnitude_removes_the_smallest_of_each_layer(sparsity: float) -> None:
    model = distinct_model()
    prune_model(model, "magnitude", sparsity)
    for kept, pruned, n in kept_and_pruned(model):
        assert pruned.numel() == round(sparsity * n)  # exact count per layer
        assert pruned.max() < kept.min()  # the smallest ones, not any others


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_magnitude_removes_the_smallest_overall(sparsity: float) -> None:
    model = distinct_model()
    rep = prune_model(model, "global-magnitude", sparsity)
    layers = kept_and_pruned(model)
    total = sum(n for _, _, n in layers)
    kept = torch.cat([k for k, _, _ in layers])
    pruned = torch.cat([p for _, p, _ in layers])
    assert pruned.numel() == round(sparsity * total) == rep.pruned
    assert pruned.max() < kept.min()
    # the small-scale layer loses more than the large one: global, not per layer
    assert (layers[1][1].numel() / layers[1][2]) > (layers[0][1].numel() / layers[0][2])
    assert sparsity_report(model).sparsity == pytest.approx(rep.pruned / total)
