"""The parsed network as sparse affine stages, the form the MILP encoding reads.

Consecutive affine layers (per-channel affine, Linear, Conv2d, Flatten) are composed
into one scipy sparse map ``z = M a + c`` in float64; ReLU and max-pool layers stay
stages of their own. Residual blocks (``fork``/``add`` layers) have no encoding here:
:class:`ModelError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from sparserobust.errors import ModelError
from sparserobust.verify.network import Layer

__all__ = ["Stage", "network_stages"]


@dataclass
class Stage:
    """An affine map ``z = M a + c`` or a nonlinear layer (``relu`` / ``maxpool``)."""

    kind: str
    matrix: sp.csr_matrix | None = None
    offset: np.ndarray | None = None
    layer: Layer | None = None
    index: int = -1  # position of a nonlinear layer in the parsed layers (bounds key)


def _conv_matrix(layer: Layer) -> sp.csr_matrix:
    """The convolution (without bias) as a sparse ``(n_out, n_in)`` matrix."""
    assert layer.weight is not None
    n_in = math.prod(layer.in_shape)
    rows, cols, vals = [], [], []
    chunk = max(1, 2_000_000 // max(1, math.prod(layer.out_shape)))
    for i0 in range(0, n_in, chunk):
        i1 = min(n_in, i0 + chunk)
        basis = torch.zeros(i1 - i0, n_in, dtype=layer.weight.dtype, device=layer.weight.device)
        diag = torch.arange(i1 - i0, device=basis.device)
        basis[diag, diag + i0] = 1.0
        out = F.conv2d(
            basis.view(-1, *layer.in_shape), layer.weight, None, layer.stride, layer.padding,
            layer.dilation, layer.groups,
        ).flatten(1)  # fmt: skip
        c, r = out.nonzero(as_tuple=True)
        rows.append(r.cpu().numpy())
        cols.append((c + i0).cpu().numpy())
        vals.append(out[c, r].cpu().numpy())
    n_out = math.prod(layer.out_shape)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_out, n_in)
    )


def _affine_of(layer: Layer) -> tuple[sp.csr_matrix, np.ndarray] | None:
    """``(M, c)`` of an affine layer in float64; None for Flatten."""
    if layer.kind == "flatten":
        return None
    assert layer.weight is not None and layer.bias is not None
    if layer.kind == "affine":
        scale = layer.channel_view(layer.weight).expand(layer.in_shape).reshape(-1)
        shift = layer.channel_view(layer.bias).expand(layer.in_shape).reshape(-1)
        return sp.diags(scale.double().cpu().numpy()).tocsr(), shift.double().cpu().numpy()
    if layer.kind == "linear":
        return sp.csr_matrix(layer.weight.double().cpu().numpy()), layer.bias.double().cpu().numpy()
    hw = math.prod(layer.out_shape[1:])
    offset = layer.bias.double().cpu().numpy().repeat(hw)
    return _conv_matrix(layer), offset


def network_stages(layers: Sequence[Layer]) -> list[Stage]:
    """Consecutive affine layers composed into one sparse map; nonlinear layers kept."""
    out: list[Stage] = []
    cur: tuple[sp.csr_matrix, np.ndarray] | None = None
    for i, layer in enumerate(layers):
        if layer.kind in ("fork", "add"):
            raise ModelError(
                f"the MILP cannot encode residual blocks ({layer.name}): use ibp, crown or alpha"
            )
        if layer.nonlinear:
            if cur is not None:
                out.append(Stage("affine", cur[0], cur[1]))
                cur = None
            out.append(Stage(layer.kind, layer=layer, index=i))
            continue
        aff = _affine_of(layer)
        if aff is None:
            continue
        cur = aff if cur is None else ((aff[0] @ cur[0]).tocsr(), aff[0] @ cur[1] + aff[1])
    if cur is not None:
        out.append(Stage("affine", cur[0], cur[1]))
    for s in out:
        if s.matrix is not None:
            s.matrix.eliminate_zeros()
    return out
