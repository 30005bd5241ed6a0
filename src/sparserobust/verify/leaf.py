"""The exact decision of a branch-and-bound leaf: a domain where every ReLU is fixed.

On a fixed ReLU pattern the network is affine, and the constraints ``z >= 0`` /
``z <= 0`` of every neuron cut the l_inf ball (in the [0,1] box) to exactly the inputs
that follow the pattern, so one LP gives the domain's exact minimal margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linprog

from sparserobust.verify.ibp import interval_forward
from sparserobust.verify.network import Layer

__all__ = ["leaf_lp"]


def leaf_lp(
    layers: Sequence[Layer], x0: torch.Tensor, eps: float, y: int, cls: int,
    lo: dict[int, torch.Tensor], hi: dict[int, torch.Tensor],
) -> tuple[float, np.ndarray | None]:  # fmt: skip
    """The exact minimum of ``f_y - f_cls`` over the inputs of the l_inf ball (in the
    box) where every ReLU follows the pattern the bounds ``lo``/``hi`` fix (active where
    ``lo >= 0``, else inactive; no neuron may be unstable), by one LP (HiGHS).

    ``x0``: ``(C, H, W)``; ``lo``/``hi``: per ReLU layer index, ``(*shape)``. On that
    pattern the network is affine and the constraints ``z >= 0`` / ``z <= 0`` of every
    neuron cut the ball to exactly the inputs that follow it. Returns ``(minimum,
    minimiser)``; ``(inf, None)`` when no input follows the pattern. ValueError for
    layers without an exact pattern form (max-pool) or an unstable neuron.
    """
    d = x0.numel()
    dtype = torch.float64
    basis = torch.cat([torch.zeros(1, d, dtype=dtype), torch.eye(d, dtype=dtype)])
    v = basis.to(x0.device).view(d + 1, *x0.shape)
    a_rows, b_rows = [], []
    for i, layer in enumerate(layers):
        if layer.kind == "maxpool":
            raise ValueError("leaf_lp handles ReLU networks only (no max-pool)")
        if layer.kind == "relu":
            lo_i, hi_i = lo[i].flatten().double().cpu(), hi[i].flatten().double().cpu()
            if bool(((lo_i < 0) & (hi_i > 0)).any()):
                raise ValueError("leaf_lp needs every ReLU stable")
            z = v.flatten(1).cpu()
            z0, m = z[0], (z[1:] - z[0]).T  # z = m x + z0, m (n, d)
            active = lo_i >= 0
            sgn = torch.where(active, -1.0, 1.0).to(dtype)  # active: -z <= 0; else z <= 0
            a_rows.append((sgn.unsqueeze(1) * m).numpy())
            b_rows.append((-sgn * z0).numpy())
            v = v * active.to(v.dtype).view(1, *layer.in_shape).to(v.device)
        else:
            v = interval_forward(layer, v, v)[0]
    out = v.cpu()
    z0, m = out[0], (out[1:] - out[0]).T
    c = (m[y] - m[cls]).numpy()
    const = float(z0[y] - z0[cls])
    xf = x0.flatten().double().cpu()
    box = list(zip((xf - eps).clamp(0, 1).tolist(), (xf + eps).clamp(0, 1).tolist(), strict=True))
    a_ub = np.vstack(a_rows) if a_rows else None
    b_ub = np.concatenate(b_rows) if b_rows else None
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=box, method="highs")
    if res.status == 2:
        return math.inf, None
    if res.status != 0:
        raise RuntimeError(f"leaf LP failed: {res.message}")
    return float(res.fun) + const, np.asarray(res.x)
