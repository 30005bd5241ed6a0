"""Metrics: robustness summaries, CLEVER scores, active ReLUs and local margin bounds."""

from sparserobust.metrics.activations import ActiveReLUs, active_relu_fraction
from sparserobust.metrics.bounds import LocalBounds, local_bounds
from sparserobust.metrics.clever import CleverResult, clever_scores
from sparserobust.metrics.robustness import (
    clean_accuracy,
    median_norm,
    rho,
    robust_accuracy,
    success_rate,
    summarize,
)

__all__ = [
    "ActiveReLUs",
    "CleverResult",
    "LocalBounds",
    "active_relu_fraction",
    "clean_accuracy",
    "clever_scores",
    "local_bounds",
    "median_norm",
    "rho",
    "robust_accuracy",
    "success_rate",
    "summarize",
]
