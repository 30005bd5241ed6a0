"""Interval bound propagation (IBP, Gowal et al. 2018): intervals pushed forward
layer by layer through the parsed network.

The input set is replaced by its interval hull ``[max(x - eps, 0), min(x + eps, 1)]``
(exact for l_inf, loose for l2). For the margins the last Linear layer is merged with
the margin specification. At a residual ``add`` the shortcut's interval (from the one
kept at its ``fork``) is added to the branch's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparserobust.errors import ModelError
from sparserobust.verify.network import Layer
from sparserobust.verify.threat import InputSet, box_lower

__all__ = ["Saved", "forward_layers", "ibp_lower", "interval_forward"]


Saved = dict[int, tuple[torch.Tensor, torch.Tensor]]


def interval_forward(
    layer: Layer, lo: torch.Tensor, hi: torch.Tensor, saved: Saved | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval ``[lo, hi]`` (each ``(B, *in_shape)``) pushed through ``layer``.

    ``saved``: the intervals kept at the open residual forks (by fork index), filled
    at a ``fork`` and used up at its ``add``, which adds the shortcut's interval; a
    network with residual blocks needs it (ModelError without it).
    """
    k = layer.kind
    if k in ("fork", "add"):
        if saved is None:
            raise ModelError(f"the residual layer {layer.name} needs the saved fork intervals")
        if k == "fork":
            saved[layer.source] = (lo, hi)
            return lo, hi
        slo, shi = saved.pop(layer.source)
        for op in layer.shortcut or []:
            slo, shi = interval_forward(op, slo, shi)
        return lo + slo, hi + shi
    if k == "relu":
        return lo.clamp_min(0), hi.clamp_min(0)
    if k == "maxpool":
        return (
            F.max_pool2d(lo, layer.kernel, layer.stride),
            F.max_pool2d(hi, layer.kernel, layer.stride),
        )
    if k == "flatten":
        return lo.flatten(1), hi.flatten(1)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    w, b = layer.weight, layer.bias
    assert w is not None and b is not None
    if k == "affine":
        s, t = layer.channel_view(w), layer.channel_view(b)
        m, r = mid * s + t, rad * s.abs()
    elif k == "linear":
        m, r = F.linear(mid, w, b), F.linear(rad, w.abs())
    else:
        args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        m, r = F.conv2d(mid, w, b, *args), F.conv2d(rad, w.abs(), None, *args)
    return m - r, m + r


def forward_layers(layers: Sequence[Layer], x: torch.Tensor) -> torch.Tensor:
    """The network's output on ``x`` ``(B, *in_shape)``, computed from ``layers``."""
    saved: Saved = {}
    for layer in layers:
        x = interval_forward(layer, x, x, saved)[0]
    return x


def ibp_lower(layers: Sequence[Layer], spec: torch.Tensor, inp: InputSet) -> torch.Tensor:
    """Lower bound over ``inp`` of ``spec . out(layers[-1])``, ``(B, m)``, by IBP.

    ``spec``: ``(B, m, K)`` rows over the network's ``K`` outputs. Intervals go through
    every layer but the last; a last Linear layer is merged with the specification
    (Gowal et al.), any other is propagated too.
    """
    bsz, m = spec.shape[:2]
    a, bias = spec, torch.zeros(bsz, m, dtype=inp.x0.dtype, device=inp.x0.device)
    last = len(layers) - 1
    lo, hi = inp.lo, inp.hi
    saved: Saved = {}
    for layer in layers[:last]:
        lo, hi = interval_forward(layer, lo, hi, saved)
    final = layers[last]
    if final.kind == "linear":
        assert final.weight is not None and final.bias is not None
        a, bias = a @ final.weight, bias + a @ final.bias
    else:
        lo, hi = interval_forward(final, lo, hi)
    return box_lower(a, bias, lo, hi)
