"""Pruning: masks and exact sparsity accounting, magnitude, DNS and random pruning.

Sparsity is the fraction of Linear/Conv weights removed (biases and BatchNorm
excluded). Masks are ``torch.nn.utils.prune`` custom masks, so a pruned model
is an ordinary module; :func:`make_permanent` folds them into the weights.
"""

from sparserobust.pruning.dns import DNSConfig, calibrate, dns_prune, straight_through
from sparserobust.pruning.magnitude import global_magnitude_prune, magnitude_prune
from sparserobust.pruning.masks import (
    SPARSITY_NOTE,
    SparsityReport,
    apply_masks,
    get_masks,
    make_permanent,
    prunable_layers,
    refresh_pruned_weights,
    set_weight_mask,
    sparsity_report,
    weight_mask,
)
from sparserobust.pruning.random import random_prune
from sparserobust.pruning.registry import METHODS, PruningMethod, method_names, pruning_method
from sparserobust.pruning.sweep import (
    checkpoint_name,
    prune_checkpoint,
    prune_model,
    sparsity_sweep,
    validate_targets,
)

__all__ = [
    "METHODS",
    "SPARSITY_NOTE",
    "DNSConfig",
    "PruningMethod",
    "SparsityReport",
    "apply_masks",
    "calibrate",
    "checkpoint_name",
    "dns_prune",
    "get_masks",
    "global_magnitude_prune",
    "magnitude_prune",
    "make_permanent",
    "method_names",
    "prunable_layers",
    "prune_checkpoint",
    "prune_model",
    "refresh_pruned_weights",
    "pruning_method",
    "random_prune",
    "set_weight_mask",
    "sparsity_report",
    "sparsity_sweep",
    "straight_through",
    "validate_targets",
    "weight_mask",
]
