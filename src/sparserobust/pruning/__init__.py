"""Pruning: masks and exact sparsity accounting, magnitude, DNS, random, HYDRA and
structured (neuron/channel) pruning, and the compact export of a structured model.

Sparsity is the fraction of Linear/Conv weights removed (biases and BatchNorm
excluded). Masks are ``torch.nn.utils.prune`` custom masks, so a pruned model
is an ordinary module; :func:`make_permanent` folds them into the weights.
"""

from sparserobust.pruning.base import OneShotMethod, PruneContext, PruningMethod
from sparserobust.pruning.dns import DNSConfig, calibrate, dns_prune, straight_through
from sparserobust.pruning.hydra import HydraSettings, hydra_prune
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
from sparserobust.pruning.registry import METHODS, method_names, pruning_method
from sparserobust.pruning.structured import (
    StructuredReport,
    StructuredSettings,
    compact,
    compact_checkpoint,
    structured_fraction,
    structured_prune,
    structured_report,
)
from sparserobust.pruning.sweep import (
    prune_checkpoint,
    prune_model,
    sparsity_sweep,
    validate_targets,
)
from sparserobust.runpaths import checkpoint_name

__all__ = [
    "METHODS",
    "SPARSITY_NOTE",
    "DNSConfig",
    "HydraSettings",
    "OneShotMethod",
    "PruneContext",
    "PruningMethod",
    "SparsityReport",
    "StructuredReport",
    "StructuredSettings",
    "apply_masks",
    "calibrate",
    "checkpoint_name",
    "compact",
    "compact_checkpoint",
    "dns_prune",
    "get_masks",
    "global_magnitude_prune",
    "hydra_prune",
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
    "structured_fraction",
    "structured_prune",
    "structured_report",
    "validate_targets",
    "weight_mask",
]
