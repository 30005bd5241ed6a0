"""Certified robustness by bound propagation: IBP and CROWN for l_inf and l2 balls.

For a point ``x`` with label ``y`` and a threat set ``S = {x' : ||x' - x||_p <= eps}
intersected with the [0,1] box`` (p = inf or 2, distances in [0,1] pixel space), the
two methods compute lower bounds of the margins ``f_y(x') - f_j(x')`` over all of
``S`` (logit units). A point is *certified* when the model classifies ``x``
correctly and every margin's lower bound is > 0: no perturbation in ``S`` can
change the class.

- **IBP** (:mod:`sparserobust.verify.ibp`): intervals pushed forward layer by layer.
- **CROWN** (:mod:`sparserobust.verify.crown`): linear bounds propagated backwards;
  the inputs of a nonlinear layer are bounded by CROWN only where the interval bounds
  leave them unstable.

Supported models: see :mod:`sparserobust.verify.network`. Bounds are computed in
floating point (float64 by default) without directed rounding.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparserobust.errors import ConfigError, DataError
from sparserobust.metrics.margin import check_metric_inputs
from sparserobust.norms import parse_norm
from sparserobust.utils import eval_mode, model_device
from sparserobust.verify.crown import crown_lower, pool_windows, tighten
from sparserobust.verify.ibp import Saved, ibp_lower, interval_forward
from sparserobust.verify.network import Layer, parse_network
from sparserobust.verify.threat import InputSet

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "BoundPass",
    "CertifyResult",
    "NetworkBounds",
    "certified_radius",
    "bound_pass",
    "certify",
    "check_labels",
    "check_method",
    "eps_vector",
    "margin_spec",
    "network_bounds",
    "prepare_layers",
]

METHODS = ("ibp", "crown")


def _unstable_count(layer: Layer, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per point: unstable ReLUs, or max-pool windows without a dominating input."""
    if layer.kind == "relu":
        return ((lo < 0) & (hi > 0)).flatten(1).sum(1)
    return (~pool_windows(layer, lo, hi)[3]).flatten(1).sum(1)


@dataclass
class BoundPass:
    """One bound pass: ``pre[i]`` the input interval of nonlinear layer ``i`` (each
    ``(B, *in_shape)``), ``margins`` ``(B, K)`` and ``unstable`` ``(B, L)`` counts."""

    pre: dict[int, tuple[torch.Tensor, torch.Tensor]]
    margins: torch.Tensor
    unstable: torch.Tensor


def margin_spec(y: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, K, K)``: row j is ``e_y - e_j`` over ``K`` logits (the zero row at ``j = y``
    is discarded by the callers)."""
    eye = torch.eye(k, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def bound_pass(
    layers: Sequence[Layer],
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps: torch.Tensor,
    p: float,
    method: str,
) -> BoundPass:
    """Input bounds of every nonlinear layer, margin lower bounds and unstable counts.

    ``x``: ``(B, *shape)`` in the layers' dtype; ``y``: labels ``(B,)`` or None (no
    margins); ``eps``: radius per point ``(B,)``. ``method``: ``ibp`` or ``crown``.
    """
    inp = InputSet(x, eps, p)
    lo, hi = inp.lo, inp.hi
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    counts: list[torch.Tensor] = []
    weights_seen, nonlinear_seen = 0, False
    saved: Saved = {}
    for i, layer in enumerate(layers):
        if layer.nonlinear:
            # intervals are exact (l_inf) on the output of the first weight layer
            exact = math.isinf(p) and weights_seen <= 1 and not nonlinear_seen
            if method == "crown" and not exact:
                lo, hi = tighten(layers, i, lo, hi, pre, inp)
            pre[i] = (lo, hi)
            counts.append(_unstable_count(layer, lo, hi))
            nonlinear_seen = True
        # a residual sum of two paths is not exact either
        weights_seen += 2 if layer.kind == "add" else layer.kind in ("linear", "conv")
        lo, hi = interval_forward(layer, lo, hi, saved)
    bsz = x.shape[0]
    none = torch.zeros(bsz, 0, dtype=torch.long, device=x.device)
    counts_t = torch.stack(counts, 1) if counts else none
    if y is None:
        return BoundPass(pre, torch.empty(bsz, 0, device=x.device), counts_t)
    k = layers[-1].out_shape[0]
    spec = margin_spec(y, k, x.dtype)
    last = len(layers) - 1
    if method == "crown":
        bias = torch.zeros(bsz, k, dtype=x.dtype, device=x.device)
        margins = crown_lower(layers, last, spec, bias, pre, inp)
    else:
        margins = ibp_lower(layers, spec, inp)
    margins = margins.scatter(1, y.view(-1, 1), math.inf)
    return BoundPass(pre, margins, counts_t)


def check_method(method: str) -> str:
    """``method`` normalised to one of :data:`METHODS`; else :class:`ConfigError`."""
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown bound method {method!r}: use ibp or crown")
    return key


def check_labels(y: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """``y`` as int64 labels after checking it is ``(n,)`` with values in ``[0, k)``;
    else :class:`DataError`."""
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
        return src[:, cols].sum(1) if cols else src.new_zeros(src.shape[0])


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


def prepare_layers(
    model: nn.Module, x: torch.Tensor, norm: float | str, dtype: torch.dtype
) -> tuple[float, list[Layer]]:
    """Check ``x`` (images in [0,1]), parse ``norm`` to ``p`` and parse the model's layers."""
    check_metric_inputs(x)
    p = parse_norm(norm)
    layers = parse_network(model, x.shape[1:], dtype=dtype, device=x.device)
    return p, layers


def eps_vector(epsilon: float | torch.Tensor, n: int) -> torch.Tensor:
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
    method = check_method(method)
    with eval_mode(model):
        p, layers = prepare_layers(model, x, norm, dtype)
        eps = eps_vector(epsilon, x.shape[0]).to(x.device)
        k = layers[-1].out_shape[0]
        yy = None if y is None else check_labels(y, x.shape[0], k).to(x.device)
        res = bound_pass(layers, x.to(dtype), yy, eps, p, method)
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
    method = check_method(method)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    device = model_device(model)
    with eval_mode(model):
        p, layers = prepare_layers(model, x.to(device), norm, dtype)
        n = x.shape[0]
        eps = eps_vector(epsilon, n)
        k = layers[-1].out_shape[0]
        y = check_labels(y, n, k)
        margins, correct, unstable, unstable_ibp = [], [], [], []
        kept: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []
        for i in range(0, n, batch_size):
            xb = x[i : i + batch_size].to(device)
            yb = y[i : i + batch_size].to(device)
            eb = eps[i : i + batch_size].to(device)
            correct.append((model(xb).argmax(1) == yb).cpu())
            xd = xb.to(dtype)
            res = bound_pass(layers, xd, yb, eb, p, method)
            margins.append(res.margins.cpu())
            if i < keep_bounds:
                k = min(keep_bounds - i, xb.shape[0])
                kept.append({j: (lo[:k].cpu(), hi[:k].cpu()) for j, (lo, hi) in res.pre.items()})
            unstable.append(res.unstable.cpu())
            if method == "ibp":
                unstable_ibp.append(res.unstable.cpu())
            else:
                unstable_ibp.append(bound_pass(layers, xd, None, eb, p, "ibp").unstable.cpu())
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
