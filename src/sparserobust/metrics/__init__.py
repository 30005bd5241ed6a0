"""Metrics: robustness summaries, CLEVER scores, active ReLUs and local margin bounds."""

from sparserobust.metrics.activations import ActiveReLUs, active_relu_fraction
from sparserobust.metrics.bounds import LocalBounds, local_bounds
from sparserobust.metrics.clever import CleverResult, clever_scores

__all__ = [
    "ActiveReLUs",
    "CleverResult",
    "LocalBounds",
    "active_relu_fraction",
    "clever_scores",
    "local_bounds",
]
