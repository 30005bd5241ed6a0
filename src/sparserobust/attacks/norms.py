"""Norms of perturbations: per-sample l_p norms, projection onto an l_p ball and the
[0,1] box, and the one norm parser (:func:`sparserobust.norms.parse_norm`, re-exported).

Norms are measured in [0,1] pixel space on the flattened input: ``p = 2`` is the l2
(Euclidean) distance, ``p = inf`` the largest absolute pixel change.
"""

from __future__ import annotations

import torch

from sparserobust.errors import AttackError
from sparserobust.norms import INF, Norm, norm_key, norm_name, parse_norm

NORM_TOL = 1e-5
"""Relative slack allowed when checking that a fixed-epsilon perturbation lies in its ball."""


def lp_norms(r: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample l_p norm of ``r`` (shape ``(N, ...)``, flattened per sample) -> shape ``(N,)``."""
    flat = r.flatten(1)
    if p == INF:
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if p == 2:
        return flat.norm(p=2, dim=1)
    if p == 1:
        return flat.abs().sum(1)
    raise AttackError(f"unsupported norm {p!r}: use 1, 2 or inf")


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample vector ``(N,)`` as ``(N, 1, 1, ...)`` to broadcast against ``x``."""
    return v.view(-1, *([1] * (x.ndim - 1)))


def project(x: torch.Tensor, x_adv: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the l_p ball of radius ``eps`` around ``x`` and the [0,1] box."""
    r = x_adv - x
    if p == INF:
        r = r.clamp(-eps, eps)
    else:
        n = lp_norms(r, p).clamp_min(1e-12)
        r = r * expand_like(torch.clamp(eps / n, max=1.0), r)
    return (x + r).clamp(0.0, 1.0)


__all__ = [
    "INF",
    "NORM_TOL",
    "Norm",
    "expand_like",
    "lp_norms",
    "norm_key",
    "norm_name",
    "parse_norm",
    "project",
]
