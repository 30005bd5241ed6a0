"""Metrics (estimates): robustness summaries, CLEVER scores, active ReLUs, local
margin ratios and evaluation checks. Sound and exact verification is
:mod:`sparserobust.verify`."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from sparserobust.metrics.activations import ActiveReLUs, active_relu_fraction
from sparserobust.metrics.clever import CleverResult, clever_scores
from sparserobust.metrics.margin import LocalBounds, local_bounds
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

# Names this package exported before verification moved to sparserobust.verify (and the
# study's verify_points to sparserobust.measurements.verify): still importable from here,
# with a DeprecationWarning, for code written against the old documented import.
_MOVED = {
    "CertifyResult": "sparserobust.verify",
    "DistanceResult": "sparserobust.verify",
    "ExactResult": "sparserobust.verify",
    "NetworkBounds": "sparserobust.verify",
    "certified_radius": "sparserobust.verify",
    "certify": "sparserobust.verify",
    "minimal_distance": "sparserobust.verify",
    "network_bounds": "sparserobust.verify",
    "verify_exact": "sparserobust.verify",
    "verify_points": "sparserobust.measurements.verify",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _MOVED[name]
    warnings.warn(
        f"sparserobust.metrics.{name} moved: import it from {module}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
