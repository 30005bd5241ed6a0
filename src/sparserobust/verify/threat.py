"""The threat set: an l_p ball (p = inf or 2) around a point, intersected with the [0,1] box.

Distances in [0,1] pixel space. The lower bound of a linear function ``a . x + bias``
over the set: l_inf concretises over the clipped box exactly; l2 uses the Lagrangian
dual ``max_lambda min_{x in box} a.x + lambda (||x - x0||^2 - eps^2)`` over a grid of
``lambda``, a sound bound for the ball intersected with the box.
"""

from __future__ import annotations

import math

import torch

__all__ = ["InputSet", "box_lower"]

_L2_LAMBDA_GRID = tuple(2.0**k for k in range(-4, 5))


def box_lower(
    a: torch.Tensor, bias: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """The minimum of ``a . x + bias`` over the box ``[lo, hi]``: ``a`` ``(B, m, *shape)``,
    ``lo``/``hi`` ``(B, *shape)``; returns ``(B, m)``. Overwrites ``a`` (with ``|a|``)
    unless ``a`` requires a gradient (optimised bounds differentiate through it)."""
    af = a.flatten(2)
    lo, hi = lo.flatten(1).unsqueeze(2), hi.flatten(1).unsqueeze(2)
    mid = torch.bmm(af, (lo + hi) / 2)[..., 0]
    mag = af.abs() if af.requires_grad else af.abs_()
    return bias + mid - torch.bmm(mag, (hi - lo) / 2)[..., 0]


class InputSet:
    """The l_p ball of radius ``eps`` ``(B,)`` around ``x0`` intersected with the [0,1] box."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor, p: float) -> None:
        self.x0, self.eps, self.p = x0, eps.to(x0.dtype), p
        e = self.eps.view(-1, *([1] * (x0.dim() - 1)))
        self.lo = (x0 - e).clamp(0.0, 1.0)
        self.hi = (x0 + e).clamp(0.0, 1.0)

    def lower(self, a: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The minimum of ``a . x + bias`` (``a``: ``(B, m, *shape)``) over the set, ``(B, m)``."""
        if math.isinf(self.p):
            return box_lower(a, bias, self.lo, self.hi)
        box = box_lower(a if a.requires_grad else a.clone(), bias, self.lo, self.hi)
        # l2: weak duality, any lambda >= 0 gives a valid lower bound:
        # min_{x in box} a.x + lambda (||x - x0||^2 - eps^2), solved coordinate-wise
        af = a.flatten(2)
        x0 = self.x0.flatten(1).unsqueeze(1)
        lo, hi = self.lo.flatten(1).unsqueeze(1), self.hi.flatten(1).unsqueeze(1)
        eps = self.eps.view(-1, 1)
        lam0 = (af.norm(dim=2) / (2 * eps.clamp_min(1e-12))).clamp_min(1e-12)
        best = box
        for f in _L2_LAMBDA_GRID:
            lam = (lam0 * f).unsqueeze(2)
            xs = torch.minimum(torch.maximum(x0 - af / (2 * lam), lo), hi)
            g = (af * xs).sum(2) + lam[..., 0] * (((xs - x0) ** 2).sum(2) - eps**2)
            best = torch.maximum(best, bias + g)
        return best
