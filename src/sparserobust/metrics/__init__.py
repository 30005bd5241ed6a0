"""Metrics: robustness summaries, CLEVER scores, active ReLUs, local margin ratios,
certified bounds (IBP, CROWN) and exact MILP verification."""

from sparserobust.metrics.activations import ActiveReLUs, active_relu_fraction
from sparserobust.metrics.certify import (
    CertifyResult,
    NetworkBounds,
    certified_radius,
    certify,
    network_bounds,
)
from sparserobust.metrics.clever import CleverResult, clever_scores
from sparserobust.metrics.margin import LocalBounds, local_bounds
from sparserobust.metrics.milp import (
    DistanceResult,
    ExactResult,
    minimal_distance,
    verify_exact,
    verify_points,
)
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
    "CertifyResult",
    "CleverResult",
    "DistanceResult",
    "ExactResult",
    "LocalBounds",
    "NetworkBounds",
    "active_relu_fraction",
    "certified_radius",
    "certify",
    "clean_accuracy",
    "clever_scores",
    "local_bounds",
    "median_norm",
    "minimal_distance",
    "network_bounds",
    "rho",
    "robust_accuracy",
    "success_rate",
    "summarize",
    "verify_exact",
    "verify_points",
]
