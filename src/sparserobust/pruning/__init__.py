"""Pruning: masks and exact sparsity accounting, magnitude, DNS and random pruning."""

from sparserobust.pruning.masks import (
    SPARSITY_NOTE,
    SparsityReport,
    prunable_layers,
    sparsity_report,
)

__all__ = ["SPARSITY_NOTE", "SparsityReport", "prunable_layers", "sparsity_report"]
