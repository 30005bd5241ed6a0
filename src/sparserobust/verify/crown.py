"""CROWN (Zhang et al. 2018): linear bounds propagated backwards through the parsed network.

Every neuron's bound is a linear function of the input propagated backwards through
the network, with the linear relaxation ``y <= u/(u-l) (z - l)`` above an unstable ReLU
and the adaptive slope ``y >= z`` (if ``u >= -l``) or ``y >= 0`` (CROWN-Ada) below it.
Max-pooling windows use ``y >= x_{i*}`` (``i*`` the input with the largest lower bound)
and ``y <= max_i u_i``, exact when one input dominates its window. The linear function
reached at the input is bounded over the threat set (:class:`InputSet`).

Intermediate (pre-activation) bounds are computed (:func:`tighten`) only for neurons
that the tightened interval bounds leave unstable; neurons proven stable cost nothing.
Pruned networks therefore get cheaper bounds as well as tighter ones: fewer unstable
ReLUs means fewer rows to propagate. Stable ReLUs are exact.

Residual blocks: at an ``add`` the coefficients go down both the branch and the
(linear) shortcut; the shortcut's part waits in ``pending`` until the pass reaches the
block's ``fork``, where the two are summed (the same input feeds both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparserobust.errors import ModelError
from sparserobust.verify.network import Layer, window_index
from sparserobust.verify.threat import InputSet

__all__ = [
    "backward_layer",
    "crown_lower",
    "pool_windows",
    "relu_relaxation",
    "start_rows",
    "tighten",
]

_ROW_BUDGET = 2**26  # coefficients per backward pass (512 MiB in float64)


def relu_relaxation(
    lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slopes ``(lower, upper)`` and upper intercept of the CROWN-Ada ReLU relaxation for
    pre-activation bounds ``lo``/``hi``: ``lower * z <= relu(z) <= upper * z + intercept``."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up = torch.where(active, torch.ones_like(hi), torch.where(unstable, hi / denom, 0.0))
    up_icpt = torch.where(unstable, -up * lo, torch.zeros_like(lo))
    low = torch.where(active | (unstable & (hi >= -lo)), 1.0, 0.0).to(lo.dtype)
    return low, up, up_icpt


def pool_windows(
    layer: Layer, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For max-pool input bounds ``(B, C, H, W)``: per window ``(B, C, L)`` the flat
    position of the input with the largest lower bound, that bound, the largest
    upper bound, and whether the window is stable (that input is the max)."""
    b, c, h, w = lo.shape
    lw = F.unfold(lo.reshape(b * c, 1, h, w), layer.kernel, stride=layer.stride)
    uw = F.unfold(hi.reshape(b * c, 1, h, w), layer.kernel, stride=layer.stride)
    l_star, i_star = lw.max(1)
    u_max = uw.max(1).values
    u_other = uw.scatter(1, i_star.unsqueeze(1), -math.inf).max(1).values
    idx = window_index(layer, lo.device)
    pos = idx.gather(0, i_star.view(b * c, -1)).view(b, c, -1)
    shape = (b, c, -1)
    return pos, l_star.view(shape), u_max.view(shape), (l_star >= u_other).view(shape)


def backward_layer(
    layer: Layer,
    a: torch.Tensor,
    bias: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    pending: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the lower bound ``a . out + bias`` of ``layer``'s output as one of its input.

    ``a``: ``(B, m, *out_shape)``, ``bias``: ``(B, m)``; ``bounds``: the input's
    interval (needed by ReLU and max-pool). ``pending``: the coefficients of the
    residual forks the pass has reached the ``add`` of but not yet the ``fork`` (by
    fork index): an ``add`` (``out = branch + shortcut(x)``) keeps ``a`` for the branch
    and stores ``a`` pushed back through the shortcut, which its ``fork`` (``x`` used
    by both) adds back; a pass that starts inside a branch finds none at the fork.
    Needed by networks with residual blocks (ModelError without it). Returns
    ``(a_in, bias)``.
    """
    k = layer.kind
    bsz, m = a.shape[:2]
    if k in ("fork", "add"):
        if pending is None:
            raise ModelError(f"the residual layer {layer.name} needs the pending coefficients")
        if k == "fork":
            kept = pending.pop(layer.source, None)
            return (a if kept is None else a + kept), bias
        a_sc = a
        for op in reversed(layer.shortcut or []):
            a_sc, bias = backward_layer(op, a_sc, bias, None)
        pending[layer.source] = a_sc
        return a, bias
    if k == "flatten":
        return a.reshape(bsz, m, *layer.in_shape), bias
    if k == "relu":
        assert bounds is not None
        low, up, icpt = relu_relaxation(*bounds)
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        bias = bias + (neg.flatten(2) * icpt.flatten(1).unsqueeze(1)).sum(2)
        return pos * low.unsqueeze(1) + neg * up.unsqueeze(1), bias
    if k == "maxpool":
        assert bounds is not None
        pos_idx, _, u_max, stable = pool_windows(layer, *bounds)
        c = layer.in_shape[0]
        af = a.reshape(bsz, m, c, -1)
        neg = af.clamp_max(0)
        coef = torch.where(stable.unsqueeze(1), af, af.clamp_min(0))
        bias = bias + (torch.where(stable.unsqueeze(1), 0.0, neg) * u_max.unsqueeze(1)).sum((2, 3))
        out = torch.zeros(bsz, m, c, math.prod(layer.in_shape[1:]), dtype=a.dtype, device=a.device)
        out.scatter_add_(3, pos_idx.unsqueeze(1).expand_as(coef), coef)
        return out.view(bsz, m, *layer.in_shape), bias
    w, b = layer.weight, layer.bias
    assert w is not None and b is not None
    if k == "affine":
        dims = tuple(range(2, a.dim()))
        bias = bias + (a * layer.channel_view(b)).sum(dims)
        return a * layer.channel_view(w), bias
    if k == "linear":
        return a @ w, bias + a @ b
    # conv: the adjoint of the convolution is the transposed convolution
    bias = bias + a.sum((3, 4)) @ b
    o, ho, wo = layer.out_shape
    ci, hi, wi = layer.in_shape
    kh, kw = w.shape[2:]
    out_pad = tuple(
        size - ((n - 1) * s - 2 * p + d * (kk - 1) + 1)
        for size, n, s, p, d, kk in zip(
            (hi, wi), (ho, wo), layer.stride, layer.padding, layer.dilation, (kh, kw), strict=True
        )
    )
    a_in = F.conv_transpose2d(
        a.reshape(bsz * m, o, ho, wo), w, None, layer.stride, layer.padding, out_pad,
        layer.groups, layer.dilation,
    )  # fmt: skip
    return a_in.view(bsz, m, ci, hi, wi), bias


def start_rows(
    layers: Sequence[Layer], end: int, idx: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Coefficients selecting neurons ``idx`` ``(B, k)`` of the output of ``layers[end]``.

    Returns ``(a, bias, next)`` where ``a . input_of(layers[next+1]) + bias`` equals the
    selected neurons (a Linear layer is applied directly by gathering its rows).
    """
    layer = layers[end]
    bsz, k = idx.shape
    if layer.kind == "linear":
        assert layer.weight is not None and layer.bias is not None
        return layer.weight[idx], layer.bias[idx], end - 1
    if layer.kind == "conv":
        a, bias = _conv_rows(layer, idx)
        return a, bias, end - 1
    n = math.prod(layer.out_shape)
    a = torch.zeros(bsz, k, n, dtype=dtype, device=idx.device)
    a.scatter_(2, idx.unsqueeze(2), 1.0)
    zero = torch.zeros(bsz, k, dtype=dtype, device=idx.device)
    return a.view(bsz, k, *layer.out_shape), zero, end


def _conv_rows(layer: Layer, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output neurons ``idx`` ``(B, k)`` of a convolution as linear functions of its input:
    ``(a, bias)`` with ``a`` ``(B, k, *in_shape)``. Each row is the neuron's kernel placed
    at its receptive field: the transposed convolution of a one-hot row, without its
    cost (``conv_transpose2d`` of one-hot rows took three quarters of CROWN's time on
    LeNet-5)."""
    w, b = layer.weight, layer.bias
    assert w is not None and b is not None
    o, ho, wo = layer.out_shape
    ci, hi, wi = layer.in_shape
    cpg, kh, kw = w.shape[1:]
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    dev = idx.device
    # input row/column of every (output position, kernel offset); out of range = padding
    rows = (torch.arange(ho, device=dev) * sh - ph).view(ho, 1, 1, 1)
    rows = rows + (torch.arange(kh, device=dev) * dh).view(1, 1, kh, 1)
    cols = (torch.arange(wo, device=dev) * sw - pw).view(1, wo, 1, 1)
    cols = cols + (torch.arange(kw, device=dev) * dw).view(1, 1, 1, kw)
    inside = (rows >= 0) & (rows < hi) & (cols >= 0) & (cols < wi)
    spot = torch.where(inside, rows * wi + cols, hi * wi).reshape(ho * wo, kh * kw)
    ch, pos = idx // (ho * wo), idx % (ho * wo)  # (B, k)
    first = (ch // (o // layer.groups)) * cpg  # first input channel of the neuron's group
    chans = first.unsqueeze(2) + torch.arange(cpg, device=dev)  # (B, k, cpg)
    # flat index into (ci, hi * wi + 1): the extra column per channel takes the padding
    flat = chans.unsqueeze(3) * (hi * wi + 1) + spot[pos].unsqueeze(2)
    bsz, k = idx.shape
    out = torch.zeros(bsz, k, ci * (hi * wi + 1), dtype=w.dtype, device=dev)
    out.scatter_add_(2, flat.flatten(2), w.flatten(1)[ch.flatten()].view(bsz, k, -1))
    a = out.view(bsz, k, ci, hi * wi + 1)[..., : hi * wi].reshape(bsz, k, ci, hi, wi)
    return a, b[ch]


def crown_lower(
    layers: Sequence[Layer],
    end: int,
    a: torch.Tensor,
    bias: torch.Tensor,
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
    inp: InputSet,
) -> torch.Tensor:
    """Lower bound over the input set of ``a . out(layers[end]) + bias``, ``(B, m)``."""
    pending: dict[int, torch.Tensor] = {}
    for i in range(end, -1, -1):
        a, bias = backward_layer(layers[i], a, bias, pre.get(i), pending)
    return inp.lower(a, bias)


def _candidates(layer: Layer, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, n)``: inputs of a nonlinear layer whose bounds still matter."""
    if layer.kind == "relu":
        return ((lo < 0) & (hi > 0)).flatten(1)
    _, _, _, stable = pool_windows(layer, lo, hi)
    b, c, h, w = lo.shape
    kk = layer.kernel[0] * layer.kernel[1]
    unstable = (~stable).to(lo.dtype).reshape(b * c, 1, -1).expand(-1, kk, -1)
    cover = F.fold(unstable, (h, w), layer.kernel, stride=layer.stride)
    return (cover > 0).view(b, -1)


def _row_chunk(layers: Sequence[Layer], i: int, bsz: int) -> int:
    """Rows per backward pass when bounding the inputs of layer ``i`` for ``bsz``
    points: the widest tensor on the way back, layer ``i``'s own input included (a
    convolution's output is wider than its input), holds ``2 * chunk`` rows per point,
    at most :data:`_ROW_BUDGET` coefficients in all."""
    widest = max(math.prod(layer.in_shape) for layer in layers[: i + 1])
    return max(1, _ROW_BUDGET // (2 * bsz * widest))


def tighten(
    layers: Sequence[Layer],
    i: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
    inp: InputSet,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds for the still-relevant inputs of nonlinear layer ``i``, intersected
    with the interval ``[lo, hi]`` (each ``(B, *in_shape)``)."""
    cand = _candidates(layers[i], lo, hi)
    counts = cand.sum(1)
    kmax = int(counts.max()) if counts.numel() else 0
    if kmax == 0:
        return lo, hi
    order = torch.argsort(cand.to(torch.int8), dim=1, descending=True, stable=True)
    idx = order[:, :kmax]
    valid = torch.arange(kmax, device=lo.device).unsqueeze(0) < counts.unsqueeze(1)
    chunk = _row_chunk(layers, i, lo.shape[0])
    lows, highs = [], []
    for r in range(0, kmax, chunk):
        a, bias, nxt = start_rows(layers, i - 1, idx[:, r : r + chunk], lo.dtype)
        k = a.shape[1]
        res = crown_lower(layers, nxt, torch.cat([a, -a], 1), torch.cat([bias, -bias], 1), pre, inp)
        lows.append(res[:, :k])
        highs.append(-res[:, k:])
    new_lo, new_hi = torch.cat(lows, 1), torch.cat(highs, 1)
    flo, fhi = lo.flatten(1).clone(), hi.flatten(1).clone()
    old_lo, old_hi = flo.gather(1, idx), fhi.gather(1, idx)
    new_lo = torch.where(valid, torch.maximum(old_lo, new_lo), old_lo)
    new_hi = torch.where(valid, torch.minimum(old_hi, new_hi), old_hi)
    flo.scatter_(1, idx, new_lo)
    fhi.scatter_(1, idx, new_hi)
    return flo.view_as(lo), fhi.view_as(hi)
