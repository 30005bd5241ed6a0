"""Certified robustness by bound propagation: IBP and CROWN for l_inf and l2 balls.

For a point ``x`` with label ``y`` and a threat set ``S = {x' : ||x' - x||_p <= eps}
intersected with the [0,1] box`` (p = inf or 2, distances in [0,1] pixel space), the
two methods compute lower bounds of the margins ``f_y(x') - f_j(x')`` over all of
``S`` (logit units). A point is *certified* when the model classifies ``x``
correctly and every margin's lower bound is > 0: no perturbation in ``S`` can
change the class.

- **IBP** (interval bound propagation, Gowal et al. 2018): intervals pushed
  forward layer by layer. The input set is replaced by its interval hull
  ``[max(x - eps, 0), min(x + eps, 1)]`` (exact for l_inf, loose for l2); the
  last Linear layer is merged with the margin specification.
- **CROWN** (Zhang et al. 2018): every neuron's bound is a linear function of the
  input propagated backwards through the network, with the linear relaxation
  ``y <= u/(u-l) (z - l)`` above an unstable ReLU and the adaptive slope
  ``y >= z`` (if ``u >= -l``) or ``y >= 0`` (CROWN-Ada) below it. Max-pooling
  windows use ``y >= x_{i*}`` (``i*`` the input with the largest lower bound)
  and ``y <= max_i u_i``, exact when one input dominates its window. Input sets:
  l_inf concretises over the clipped box exactly; l2 uses the Lagrangian dual
  ``max_lambda min_{x in box} a.x + lambda (||x - x0||^2 - eps^2)`` over a grid of
  ``lambda``, a sound bound for the ball intersected with the box.

Intermediate (pre-activation) bounds are computed by CROWN only for neurons that
the tightened interval bounds leave unstable; neurons proven stable cost nothing.
Pruned networks therefore get cheaper bounds as well as tighter ones: fewer
unstable ReLUs means fewer rows to propagate. Stable ReLUs are exact.

Supported models: ``nn.Sequential`` (nested allowed) of :class:`Normalize`,
``nn.Linear``, ``nn.Conv2d``, ``nn.ReLU``, ``nn.Flatten``, ``nn.MaxPool2d``
(no padding, dilation 1), eval-mode ``nn.BatchNorm1d/2d``, ``nn.Identity`` and
``nn.Dropout``. Pruned layers are read through their effective weight
``weight_orig * weight_mask``. Bounds are computed in floating point (float64 by
default) without directed rounding.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.errors import ConfigError, DataError, ModelError
from sparserobust.metrics.margin import check_metric_inputs, parse_metric_norm
from sparserobust.models.common import Normalize
from sparserobust.pruning.masks import effective_weight
from sparserobust.utils import eval_mode, model_device

log = logging.getLogger(__name__)

__all__ = [
    "CertifyResult",
    "Layer",
    "NetworkBounds",
    "certified_radius",
    "certify",
    "forward_layers",
    "network_bounds",
    "parse_network",
]

METHODS = ("ibp", "crown")
_L2_LAMBDA_GRID = tuple(2.0**k for k in range(-4, 5))
_ROW_BUDGET = 2**26  # coefficients per backward pass (512 MiB in float64)


@dataclass
class Layer:
    """One op of a parsed network, with its parameters as plain tensors.

    ``kind`` is ``affine`` (per-channel ``x * scale + shift``: Normalize and
    eval-mode BatchNorm), ``linear``, ``conv``, ``flatten``, ``relu`` or ``maxpool``.
    ``in_shape``/``out_shape`` are per-sample shapes. ``weight``/``bias``: Linear
    ``(out, in)``/``(out,)``, Conv2d ``(O, I, kh, kw)``/``(O,)``, affine ``scale``/
    ``shift`` ``(C,)``. ``stride``/``padding``/``dilation``/``groups`` for conv,
    ``kernel``/``stride`` for maxpool. ``name``: the module's name in the model.
    """

    kind: str
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def nonlinear(self) -> bool:
        """True for ReLU and max-pool (the layers that need input bounds)."""
        return self.kind in ("relu", "maxpool")

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A ``(C,)`` per-channel vector shaped to broadcast over ``in_shape``."""
        return v.view(-1, *([1] * (len(self.in_shape) - 1)))


# -- parsing -------------------------------------------------------------------------------


def _modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            out += _modules(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), model)]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unsupported(name: str, module: nn.Module, why: str = "") -> ModelError:
    return ModelError(
        f"certify cannot bound {type(module).__name__} at {name or 'the top level'}{why}: "
        "use an nn.Sequential of Normalize, Linear, Conv2d, ReLU, Flatten, MaxPool2d"
    )


@torch.no_grad()
def _layer_of(
    name: str, module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Layer | None:
    def t(v: torch.Tensor) -> torch.Tensor:
        return v.detach().to(device=device, dtype=dtype)

    if isinstance(module, nn.Identity | nn.Dropout):
        return None
    if isinstance(module, Normalize):
        std = t(module.std).flatten()
        scale = 1.0 / std
        shift = -t(module.mean).flatten() / std
        return Layer("affine", name, shape, shape, scale.expand(shape[0]), shift.expand(shape[0]))
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            raise _unsupported(name, module, " without running statistics")
        scale = 1.0 / torch.sqrt(t(module.running_var) + module.eps)
        shift = -t(module.running_mean) * scale
        if module.affine:
            scale, shift = scale * t(module.weight), shift * t(module.weight) + t(module.bias)
        return Layer("affine", name, shape, shape, scale, shift)
    if isinstance(module, nn.Linear):
        w = t(effective_weight(module))
        b = t(module.bias) if module.bias is not None else torch.zeros(w.shape[0], dtype=dtype)
        if len(shape) != 1 or shape[0] != w.shape[1]:
            raise _unsupported(name, module, f" on inputs of shape {shape}")
        return Layer("linear", name, shape, (w.shape[0],), w, b.to(device))
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _unsupported(name, module, " with non-zero or string padding mode")
        w = t(effective_weight(module))
        b = t(module.bias) if module.bias is not None else torch.zeros(w.shape[0], dtype=dtype)
        layer = Layer(
            "conv", name, shape, shape, w, b.to(device), stride=_pair(module.stride),
            padding=_pair(module.padding), dilation=_pair(module.dilation), groups=module.groups,
        )  # fmt: skip
        out = F.conv2d(torch.zeros(1, *shape, dtype=dtype, device=device), w, None,
                       layer.stride, layer.padding, layer.dilation, layer.groups)  # fmt: skip
        layer.out_shape = tuple(out.shape[1:])
        return layer
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported(name, module, " other than Flatten(1, -1)")
        return Layer("flatten", name, shape, (math.prod(shape),))
    if isinstance(module, nn.ReLU):
        return Layer("relu", name, shape, shape)
    if isinstance(module, nn.MaxPool2d):
        if (
            _pair(module.padding) != (0, 0)
            or _pair(module.dilation) != (1, 1)
            or module.ceil_mode
            or module.return_indices
        ):
            raise _unsupported(name, module, " with padding, dilation or ceil_mode")
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        out = F.max_pool2d(torch.zeros(1, *shape, dtype=dtype), kernel, stride)
        return Layer("maxpool", name, shape, tuple(out.shape[1:]), kernel=kernel, stride=stride)
    raise _unsupported(name, module)


def _fold_affine(layers: list[Layer]) -> list[Layer]:
    """Merge a per-channel affine op into the next Linear (through Flatten) or
    padding-free Conv2d: the same function with one op fewer to propagate."""
    out: list[Layer] = []
    i = 0
    while i < len(layers):
        a = layers[i]
        if a.kind == "affine" and a.weight is not None and a.bias is not None:
            j = i + 1 if i + 1 < len(layers) and layers[i + 1].kind == "flatten" else i
            nxt = layers[j + 1] if j + 1 < len(layers) else None
            scale = a.channel_view(a.weight).expand(a.in_shape)
            shift = a.channel_view(a.bias).expand(a.in_shape)
            if nxt is not None and nxt.kind == "linear" and nxt.weight is not None:
                w = nxt.weight * scale.reshape(1, -1)
                b = nxt.bias + nxt.weight @ shift.reshape(-1)  # type: ignore[operator]
                out += layers[i + 1 : j + 1]
                out.append(Layer("linear", nxt.name, nxt.in_shape, nxt.out_shape, w, b))
                i = j + 2
                continue
            if (
                nxt is not None
                and j == i
                and nxt.kind == "conv"
                and nxt.weight is not None
                and nxt.padding == (0, 0)
                and nxt.groups == 1
            ):
                w = nxt.weight * a.weight.view(1, -1, 1, 1)
                b = nxt.bias + (nxt.weight * a.bias.view(1, -1, 1, 1)).sum((1, 2, 3))  # type: ignore[operator]
                out.append(Layer(**{**nxt.__dict__, "weight": w, "bias": b}))
                i += 2
                continue
        out.append(a)
        i += 1
    return out


def parse_network(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> list[Layer]:
    """The ops of ``model`` (an ``nn.Sequential``) as :class:`Layer` records.

    ``input_shape``: one input's shape, e.g. ``(1, 28, 28)``. Weights are the
    effective (masked) weights in ``dtype``; a Normalize in front of a Linear or
    padding-free Conv2d is folded into it. Raises :class:`ModelError` for ops
    that have no bound rule here.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    if not isinstance(model, nn.Sequential):
        raise _unsupported("", model)
    shape = tuple(int(s) for s in input_shape)
    layers: list[Layer] = []
    for name, module in _modules(model):
        layer = _layer_of(name, module, shape, dtype, dev)
        if layer is not None:
            layers.append(layer)
            shape = layer.out_shape
    if len(shape) != 1:
        raise ModelError(f"the model ends with shape {shape}, not logits (N, classes)")
    return _fold_affine(layers)


def forward_layers(layers: Sequence[Layer], x: torch.Tensor) -> torch.Tensor:
    """The network's output on ``x`` ``(B, *in_shape)``, computed from ``layers``."""
    for layer in layers:
        x = _forward(layer, x, x)[0]
    return x


# -- interval propagation --------------------------------------------------------------------


def _forward(layer: Layer, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval ``[lo, hi]`` (each ``(B, *in_shape)``) pushed through ``layer``."""
    k = layer.kind
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


# -- backward (CROWN) propagation -------------------------------------------------------------


def _relu_relaxation(
    lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slopes ``(lower, upper)`` and upper intercept of the CROWN-Ada ReLU relaxation."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up = torch.where(active, torch.ones_like(hi), torch.where(unstable, hi / denom, 0.0))
    up_icpt = torch.where(unstable, -up * lo, torch.zeros_like(lo))
    low = torch.where(active | (unstable & (hi >= -lo)), 1.0, 0.0).to(lo.dtype)
    return low, up, up_icpt


def _window_index(layer: Layer, device: torch.device) -> torch.Tensor:
    """``(K, L)``: flat input position of offset ``k`` in pooling window ``l``."""
    _, h, w = layer.in_shape
    pos = torch.arange(h * w, dtype=torch.float64, device=device).view(1, 1, h, w)
    return F.unfold(pos, layer.kernel, stride=layer.stride)[0].round().long()


def _pool_windows(
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
    idx = _window_index(layer, lo.device)
    pos = idx.gather(0, i_star.view(b * c, -1)).view(b, c, -1)
    shape = (b, c, -1)
    return pos, l_star.view(shape), u_max.view(shape), (l_star >= u_other).view(shape)


def _backward(
    layer: Layer,
    a: torch.Tensor,
    bias: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the lower bound ``a . out + bias`` of ``layer``'s output as one of its input.

    ``a``: ``(B, m, *out_shape)``, ``bias``: ``(B, m)``; ``bounds``: the input's
    interval (needed by ReLU and max-pool). Returns ``(a_in, bias)``.
    """
    k = layer.kind
    bsz, m = a.shape[:2]
    if k == "flatten":
        return a.reshape(bsz, m, *layer.in_shape), bias
    if k == "relu":
        assert bounds is not None
        low, up, icpt = _relu_relaxation(*bounds)
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        bias = bias + (neg.flatten(2) * icpt.flatten(1).unsqueeze(1)).sum(2)
        return pos * low.unsqueeze(1) + neg * up.unsqueeze(1), bias
    if k == "maxpool":
        assert bounds is not None
        pos_idx, _, u_max, stable = _pool_windows(layer, *bounds)
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


def _box_lower(
    a: torch.Tensor, bias: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """The minimum of ``a . x + bias`` over the box ``[lo, hi]``: ``a`` ``(B, m, *shape)``,
    ``lo``/``hi`` ``(B, *shape)``; returns ``(B, m)``. Overwrites ``a`` (with ``|a|``)."""
    af = a.flatten(2)
    lo, hi = lo.flatten(1).unsqueeze(2), hi.flatten(1).unsqueeze(2)
    mid = torch.bmm(af, (lo + hi) / 2)[..., 0]
    return bias + mid - torch.bmm(af.abs_(), (hi - lo) / 2)[..., 0]


class _InputSet:
    """The l_p ball of radius ``eps`` ``(B,)`` around ``x0`` intersected with the [0,1] box."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor, p: float) -> None:
        self.x0, self.eps, self.p = x0, eps.to(x0.dtype), p
        e = self.eps.view(-1, *([1] * (x0.dim() - 1)))
        self.lo = (x0 - e).clamp(0.0, 1.0)
        self.hi = (x0 + e).clamp(0.0, 1.0)

    def lower(self, a: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The minimum of ``a . x + bias`` (``a``: ``(B, m, *shape)``) over the set, ``(B, m)``."""
        if math.isinf(self.p):
            return _box_lower(a, bias, self.lo, self.hi)
        box = _box_lower(a.clone(), bias, self.lo, self.hi)
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


def _start_rows(
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


def _crown_lower(
    layers: Sequence[Layer],
    end: int,
    a: torch.Tensor,
    bias: torch.Tensor,
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
    inp: _InputSet,
) -> torch.Tensor:
    """Lower bound over the input set of ``a . out(layers[end]) + bias``, ``(B, m)``."""
    for i in range(end, -1, -1):
        a, bias = _backward(layers[i], a, bias, pre.get(i))
    return inp.lower(a, bias)


def _candidates(layer: Layer, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, n)``: inputs of a nonlinear layer whose bounds still matter."""
    if layer.kind == "relu":
        return ((lo < 0) & (hi > 0)).flatten(1)
    _, _, _, stable = _pool_windows(layer, lo, hi)
    b, c, h, w = lo.shape
    kk = layer.kernel[0] * layer.kernel[1]
    unstable = (~stable).to(lo.dtype).reshape(b * c, 1, -1).expand(-1, kk, -1)
    cover = F.fold(unstable, (h, w), layer.kernel, stride=layer.stride)
    return (cover > 0).view(b, -1)


def _unstable_count(layer: Layer, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per point: unstable ReLUs, or max-pool windows without a dominating input."""
    if layer.kind == "relu":
        return ((lo < 0) & (hi > 0)).flatten(1).sum(1)
    return (~_pool_windows(layer, lo, hi)[3]).flatten(1).sum(1)


@dataclass
class _Pass:
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]]
    margins: torch.Tensor
    unstable: torch.Tensor


def _spec(y: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, K, K)``: row j is ``e_y - e_j`` (the zero row at ``j = y`` is discarded)."""
    eye = torch.eye(k, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _bound_pass(
    layers: Sequence[Layer],
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps: torch.Tensor,
    p: float,
    method: str,
) -> _Pass:
    """Input bounds of every nonlinear layer, margin lower bounds and unstable counts.

    ``x``: ``(B, *shape)`` in the layers' dtype; ``y``: labels ``(B,)`` or None (no
    margins); ``eps``: radius per point ``(B,)``. ``method``: ``ibp`` or ``crown``.
    """
    inp = _InputSet(x, eps, p)
    lo, hi = inp.lo, inp.hi
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    counts: list[torch.Tensor] = []
    weights_seen, nonlinear_seen = 0, False
    for i, layer in enumerate(layers):
        if layer.nonlinear:
            # intervals are exact (l_inf) on the output of the first weight layer
            exact = math.isinf(p) and weights_seen <= 1 and not nonlinear_seen
            if method == "crown" and not exact:
                lo, hi = _tighten(layers, i, lo, hi, pre, inp)
            pre[i] = (lo, hi)
            counts.append(_unstable_count(layer, lo, hi))
            nonlinear_seen = True
        weights_seen += layer.kind in ("linear", "conv")
        lo, hi = _forward(layer, lo, hi)
    bsz = x.shape[0]
    counts_t = torch.stack(counts, 1) if counts else torch.zeros(bsz, 0, dtype=torch.long)
    if y is None:
        return _Pass(pre, torch.empty(bsz, 0), counts_t)
    k = layers[-1].out_shape[0]
    spec = _spec(y, k, x.dtype)
    last = len(layers) - 1
    if method == "crown":
        margins = _crown_lower(layers, last, spec, torch.zeros(bsz, k, dtype=x.dtype), pre, inp)
    else:
        # IBP: the last Linear layer merged with the specification (Gowal et al.)
        a, bias = spec, torch.zeros(bsz, k, dtype=x.dtype, device=x.device)
        lo, hi = inp.lo, inp.hi
        for layer in layers[:last]:
            lo, hi = _forward(layer, lo, hi)
        if layers[last].kind == "linear":
            a, bias = _backward(layers[last], a, bias, None)
        else:
            lo, hi = _forward(layers[last], lo, hi)
        margins = _box_lower(a, bias, lo, hi)
    margins = margins.scatter(1, y.view(-1, 1), math.inf)
    return _Pass(pre, margins, counts_t)


def _row_chunk(layers: Sequence[Layer], i: int, bsz: int) -> int:
    """Rows per backward pass when bounding the inputs of layer ``i`` for ``bsz``
    points: the widest tensor on the way back, layer ``i``'s own input included (a
    convolution's output is wider than its input), holds ``2 * chunk`` rows per point,
    at most :data:`_ROW_BUDGET` coefficients in all."""
    widest = max(math.prod(layer.in_shape) for layer in layers[: i + 1])
    return max(1, _ROW_BUDGET // (2 * bsz * widest))


def _tighten(
    layers: Sequence[Layer],
    i: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
    inp: _InputSet,
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
        a, bias, nxt = _start_rows(layers, i - 1, idx[:, r : r + chunk], lo.dtype)
        k = a.shape[1]
        res = _crown_lower(
            layers, nxt, torch.cat([a, -a], 1), torch.cat([bias, -bias], 1), pre, inp
        )
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


# -- public API -----------------------------------------------------------------------------


def _check_method(method: str) -> str:
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown bound method {method!r}: use ibp or crown")
    return key


def _check_labels(y: torch.Tensor, n: int, k: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != n:
        raise DataError(f"labels must be a tensor of shape ({n},)")
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(f"labels must lie in [0, {k - 1}] for a {k}-class model")
    return y.long()


@dataclass(frozen=True)
class CertifyResult:
    """Certified margins of one bound method at one epsilon.

    Shapes: ``N`` points, ``K`` classes, ``L`` nonlinear layers. Tensors on CPU.

    - ``margins`` ``(N, K)``: lower bound of ``f_y - f_j`` over the threat set
      (logit units), ``inf`` at ``j = y``.
    - ``clean_correct`` ``(N,)``: the model classifies the clean point correctly.
    - ``certified`` ``(N,)``: clean correct and every margin bound > 0.
    - ``unstable`` ``(N, L)``: unstable units per nonlinear layer under this method's
      bounds (ReLU: ``l < 0 < u``; max-pool: windows with no dominating input);
      ``unstable_ibp`` the same under plain interval bounds. ``layer_kinds``: ``relu``
      or ``maxpool`` per column.
    - ``epsilon``: radius in [0,1] pixel space; ``norm``: 2.0 or inf.
    - ``pre``: with ``certify(keep_bounds=k)``, the input bounds of every nonlinear
      layer (as :attr:`NetworkBounds.pre`) for the first ``k`` points; else None.
    """

    method: str
    norm: float
    epsilon: float
    margins: torch.Tensor
    clean_correct: torch.Tensor
    certified: torch.Tensor
    unstable: torch.Tensor
    unstable_ibp: torch.Tensor
    layer_kinds: tuple[str, ...]
    seconds: float
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def accuracy(self) -> float:
        """Certified robust accuracy: fraction of all points certified."""
        return float(self.certified.float().mean()) if self.certified.numel() else math.nan

    def unstable_relus(self, ibp: bool = False) -> torch.Tensor:
        """``(N,)``: unstable ReLUs per point, summed over ReLU layers."""
        cols = [i for i, kind in enumerate(self.layer_kinds) if kind == "relu"]
        src = self.unstable_ibp if ibp else self.unstable
        return src[:, cols].sum(1) if cols else torch.zeros(src.shape[0], dtype=torch.long)


@dataclass
class NetworkBounds:
    """Parsed layers with the input interval of every nonlinear layer, for one point set.

    ``pre[i]`` = ``(lower, upper)``, each ``(B, *layers[i].in_shape)``, for each
    nonlinear layer index ``i``; ``margins`` ``(B, K)`` as in :class:`CertifyResult`
    (empty when no labels were given); ``unstable`` ``(B, L)``.
    """

    layers: list[Layer]
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]]
    margins: torch.Tensor
    unstable: torch.Tensor


def _prepare(
    model: nn.Module, x: torch.Tensor, norm: float | str, dtype: torch.dtype
) -> tuple[float, list[Layer]]:
    check_metric_inputs(x)
    p = parse_metric_norm(norm)
    layers = parse_network(model, x.shape[1:], dtype=dtype, device=x.device)
    return p, layers


def _eps_vector(epsilon: float | torch.Tensor, n: int) -> torch.Tensor:
    """Radii ``(n,)`` in float64 from a number or a per-point tensor; ConfigError if bad."""
    if isinstance(epsilon, torch.Tensor):
        eps = epsilon.detach().to("cpu", torch.float64).flatten()
        if eps.numel() == 1:
            eps = eps.expand(n)
    else:
        try:
            eps = torch.full((n,), float(epsilon), dtype=torch.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"epsilon must be a number >= 0, got {epsilon!r}") from None
    if eps.numel() != n or not bool(torch.isfinite(eps).all() and (eps >= 0).all()):
        raise ConfigError(f"epsilon must be finite numbers >= 0, one or one per point ({n})")
    return eps


@torch.no_grad()
def network_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    epsilon: float | torch.Tensor,
    norm: float | str = "inf",
    method: str = "crown",
    dtype: torch.dtype = torch.float64,
) -> NetworkBounds:
    """Bounds of every nonlinear layer's input for the threat sets around ``x``.

    ``x``: ``(B, C, H, W)`` images in [0,1]; ``y``: labels ``(B,)`` to also bound
    the margins, or None; ``epsilon``: one radius or one per point ``(B,)``. One
    batch, no chunking (see :func:`certify`). Runs in eval mode, on ``x``'s device.
    """
    method = _check_method(method)
    with eval_mode(model):
        p, layers = _prepare(model, x, norm, dtype)
        eps = _eps_vector(epsilon, x.shape[0]).to(x.device)
        k = layers[-1].out_shape[0]
        yy = None if y is None else _check_labels(y, x.shape[0], k).to(x.device)
        res = _bound_pass(layers, x.to(dtype), yy, eps, p, method)
    return NetworkBounds(layers, res.pre, res.margins, res.unstable)


@torch.no_grad()
def certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float | torch.Tensor,
    norm: float | str = "inf",
    method: str = "crown",
    batch_size: int = 250,
    dtype: torch.dtype = torch.float64,
    keep_bounds: int = 0,
) -> CertifyResult:
    """Certify ``model`` on ``x`` ``(N, C, H, W)`` in [0,1] with labels ``y`` ``(N,)``.

    Threat set: l_p ball (``norm`` 2 or inf) of radius ``epsilon`` ([0,1] pixel
    space; one number, or one per point ``(N,)``) intersected with the [0,1] box.
    ``method``: ``ibp`` or ``crown``. ``batch_size`` points are bounded at a time
    (memory grows with it times the number of unstable neurons times the input
    size). Bounds are computed in ``dtype`` on the model's device; the model is in
    eval mode meanwhile and its mode is restored. ``keep_bounds``: keep the nonlinear
    layers' input bounds of the first that many points (``CertifyResult.pre``, on CPU),
    for an exact verifier to reuse.
    """
    method = _check_method(method)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    device = model_device(model)
    with eval_mode(model):
        p, layers = _prepare(model, x.to(device), norm, dtype)
        n = x.shape[0]
        eps = _eps_vector(epsilon, n)
        k = layers[-1].out_shape[0]
        y = _check_labels(y, n, k)
        margins, correct, unstable, unstable_ibp = [], [], [], []
        kept: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []
        for i in range(0, n, batch_size):
            xb = x[i : i + batch_size].to(device)
            yb = y[i : i + batch_size].to(device)
            eb = eps[i : i + batch_size].to(device)
            correct.append((model(xb).argmax(1) == yb).cpu())
            xd = xb.to(dtype)
            res = _bound_pass(layers, xd, yb, eb, p, method)
            margins.append(res.margins.cpu())
            if i < keep_bounds:
                k = min(keep_bounds - i, xb.shape[0])
                kept.append({j: (lo[:k].cpu(), hi[:k].cpu()) for j, (lo, hi) in res.pre.items()})
            unstable.append(res.unstable.cpu())
            if method == "ibp":
                unstable_ibp.append(res.unstable.cpu())
            else:
                unstable_ibp.append(_bound_pass(layers, xd, None, eb, p, "ibp").unstable.cpu())
    m = torch.cat(margins)
    cc = torch.cat(correct)
    certified = cc & (m > 0).all(1)
    kinds = tuple(layer.kind for layer in layers if layer.nonlinear)
    seconds = time.perf_counter() - start
    log.info("%s l%s: %d points in %.2fs", method, norm, n, seconds)
    eps_out = float(eps[0]) if n and bool((eps == eps[0]).all()) else math.nan
    pre = None
    if kept:
        pre = {j: (torch.cat([b[j][0] for b in kept]), torch.cat([b[j][1] for b in kept]))
               for j in kept[0]}  # fmt: skip
    return CertifyResult(
        method, p, eps_out, m, cc, certified, torch.cat(unstable), torch.cat(unstable_ibp), kinds,
        seconds, pre,
    )  # fmt: skip


def certified_radius(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: float | str = "inf",
    method: str = "crown",
    max_epsilon: float = 0.5,
    tol: float = 1e-4,
    batch_size: int = 250,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Largest radius ([0,1] pixel units) at which ``method`` certifies each point, ``(N,)``.

    Bisection on a per-point radius: every returned radius ``r`` is itself
    certified, and the method fails at some radius in ``(r, r + tol]`` (or
    ``r = max_epsilon``). 0 for misclassified points. Costs
    ``log2(max_epsilon / tol)`` batched certify runs.
    """
    if not (tol > 0 and max_epsilon > 0):
        raise ConfigError("certified_radius needs tol > 0 and max_epsilon > 0")
    n = x.shape[0]
    kw = {"norm": norm, "method": method, "batch_size": batch_size, "dtype": dtype}
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), float(max_epsilon), dtype=torch.float64)
    base = certify(model, x, y, epsilon=0.0, **kw)  # type: ignore[arg-type]
    hi[~base.certified] = 0.0
    top = certify(model, x, y, epsilon=hi, **kw).certified  # type: ignore[arg-type]
    lo[top] = hi[top]
    while float((hi - lo).max()) > tol:
        mid = (lo + hi) / 2
        ok = certify(model, x, y, epsilon=mid, **kw).certified  # type: ignore[arg-type]
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo
