"""alpha-CROWN (Xu et al. 2021): CROWN with the ReLU lower-relaxation slopes optimised.

Below an unstable ReLU (``l < 0 < u``) any slope ``alpha`` in [0, 1] gives a sound lower
relaxation ``relu(z) >= alpha z``; CROWN picks 0 or 1 (CROWN-Ada). alpha-CROWN keeps one
``alpha`` per unstable neuron, per point and per output specification (margin row), and
maximises the bound by projected gradient ascent (Adam, then clipping to [0, 1]),
starting from CROWN's slopes. Every iterate is a sound bound, so the best bound seen per
row is kept: alpha-CROWN is never looser than CROWN.

Max-pool windows (:func:`pool_backward`): below, ``max_k z_k >= sum_k lambda_k z_k`` for
any weights ``lambda`` on the simplex (each ``z_k`` is a lower bound of the max); CROWN
takes the input with the largest lower bound, alpha-CROWN optimises ``lambda`` per
window, point and margin row from there. Above, the chord of ``max(z_j, M)`` over
``[l_j, u_j]``, with ``j`` the input with the largest upper bound and ``M`` the second
largest upper bound (``max_k z_k <= max(z_j, M)``, a convex function of ``z_j``): it is
below CROWN's constant ``u_j`` everywhere on the window's box except at ``z_j = u_j``.

What is optimised here: the final margins' slopes and pool weights. The intermediate
(pre-activation) bounds stay CROWN's (:func:`sparserobust.verify.certification.bound_pass`).
The same backward pass takes beta-CROWN's split multipliers (:func:`relaxed_lower`'s
``beta``), which branch and bound (:mod:`sparserobust.verify.bab`) optimises jointly
with ``alpha``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.utils import eval_mode, model_device
from sparserobust.verify.certification import (
    CertifyResult,
    bound_pass,
    check_labels,
    eps_vector,
    margin_spec,
    prepare_layers,
)
from sparserobust.verify.crown import backward_layer, relu_relaxation, start_rows
from sparserobust.verify.network import Layer, window_index
from sparserobust.verify.threat import InputSet

log = logging.getLogger(__name__)

__all__ = [
    "alpha_certify",
    "initial_alpha",
    "initial_pool",
    "optimize_bounds",
    "optimize_intermediate",
    "pool_backward",
    "relaxed_lower",
    "relu_backward",
    "relu_indices",
]

Bounds = dict[int, tuple[torch.Tensor, torch.Tensor]]


def relu_indices(layers: Sequence[Layer]) -> list[int]:
    """Positions of the ReLU layers in the parsed ``layers``."""
    return [i for i, layer in enumerate(layers) if layer.kind == "relu"]


def initial_alpha(pre: Bounds, relus: Sequence[int], m: int) -> dict[int, torch.Tensor]:
    """CROWN-Ada's lower slopes (1 where ``u >= -l``, else 0) as ``(B, m, *shape)`` per
    ReLU layer: the starting point of the optimisation, one copy per margin row."""
    out = {}
    for i in relus:
        lo, hi = pre[i]
        slope = (hi >= -lo).to(lo.dtype).unsqueeze(1)
        out[i] = slope.expand(-1, m, *lo.shape[1:]).clone()
    return out


def _windows(layer: Layer, v: torch.Tensor) -> torch.Tensor:
    """Max-pool input values ``(B, C, H, W)`` as windows ``(B, C, K, L)`` (``K`` inputs
    per window, ``L`` windows)."""
    b, c, h, w = v.shape
    out = F.unfold(v.reshape(b * c, 1, h, w), layer.kernel, stride=layer.stride)
    return out.view(b, c, *out.shape[1:])


def initial_pool(layers: Sequence[Layer], pre: Bounds, m: int) -> dict[int, torch.Tensor]:
    """CROWN's lower choice per max-pool window (all weight on the input with the largest
    lower bound) as weights ``(B, m, C, K, L)`` per max-pool layer index: the starting
    point of the optimisation of :func:`pool_backward`'s ``lam``."""
    out = {}
    for i, layer in enumerate(layers):
        if layer.kind != "maxpool":
            continue
        lw = _windows(layer, pre[i][0])
        onehot = torch.zeros_like(lw).scatter_(2, lw.argmax(2, keepdim=True), 1.0)
        out[i] = onehot.unsqueeze(1).expand(-1, m, *onehot.shape[1:]).clone()
    return out


def initial_params(layers: Sequence[Layer], pre: Bounds, m: int) -> dict[int, torch.Tensor]:
    """The optimisation's starting point for ``m`` margin rows: CROWN's ReLU slopes
    (:func:`initial_alpha`) and max-pool weights (:func:`initial_pool`), by layer index."""
    return {**initial_alpha(pre, relu_indices(layers), m), **initial_pool(layers, pre, m)}


def pool_backward(
    layer: Layer,
    a: torch.Tensor,
    bias: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    lam: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the lower bound ``a . maxpool(z) + bias`` as one of the pool's input ``z``.

    ``a``: ``(B, m, C, Ho, Wo)``; ``lo``/``hi``: ``z``'s bounds ``(B, C, H, W)``; ``lam``:
    lower weights per window input ``(B, m, C, K, L)``, made non-negative and normalised
    over ``K`` (None, or a window whose weights are all 0: CROWN's choice). A window whose
    largest lower bound is at least every other input's upper bound is exact (that input
    is the max). Upper relaxation: the chord in the module docstring."""
    bsz, m = a.shape[:2]
    c = layer.in_shape[0]
    lw, uw = _windows(layer, lo), _windows(layer, hi)
    l_star, i_star = lw.max(2, keepdim=True)
    crown = torch.zeros_like(lw).scatter_(2, i_star, 1.0)  # (B, C, K, L)
    stable = l_star >= uw.scatter(2, i_star, -math.inf).max(2, keepdim=True).values
    u_top, j_top = uw.max(2, keepdim=True)
    u_second = uw.scatter(2, j_top, -math.inf).max(2, keepdim=True).values
    l_top = lw.gather(2, j_top)
    flat = l_top >= u_second  # the top input is the max: slope 1, no intercept
    slope = torch.where(flat, 1.0, (u_top - u_second) / (u_top - l_top).clamp_min(1e-30))
    icpt = torch.where(flat, 0.0, u_second - slope * l_top)  # (B, C, 1, L)
    upper = torch.zeros_like(uw).scatter_(2, j_top, slope)  # (B, C, K, L)
    if lam is None:
        weights = crown.unsqueeze(1)
    else:
        v = _project(lam, 0.0, None)
        total = v.sum(3, keepdim=True)
        norm = v / torch.where(total > 0, total, torch.ones_like(total))
        weights = torch.where(total > 0, norm, crown.unsqueeze(1))
        weights = torch.where(stable.unsqueeze(1), crown.unsqueeze(1), weights)
    af = a.reshape(bsz, m, c, 1, -1)
    pos, neg = af.clamp_min(0), af.clamp_max(0)
    bias = bias + (neg * icpt.unsqueeze(1)).flatten(2).sum(2)
    coef = pos * weights + neg * upper.unsqueeze(1)  # (B, m, C, K, L)
    idx = window_index(layer, a.device).view(1, 1, 1, -1)
    out = torch.zeros(bsz, m, c, math.prod(layer.in_shape[1:]), dtype=a.dtype, device=a.device)
    out.scatter_add_(3, idx.expand(bsz, m, c, -1), coef.reshape(bsz, m, c, -1))
    return out.view(bsz, m, *layer.in_shape), bias


def _project(v: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
    """``v`` clipped to ``[lo, hi]`` in value, with the gradient of the identity (torch's
    clamp has a zero gradient on the boundary, where CROWN's slopes start)."""
    return v + (v.clamp(lo, hi) - v).detach()


Relaxation = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def relu_constants(lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
    """CROWN's ReLU relaxation of ``lo``/``hi`` ``(B, *shape)`` (lower slope, upper slope,
    upper intercept) and the unstable mask ``(B, 1, *shape)``."""
    low, up, icpt = relu_relaxation(lo, hi)
    return low, up, icpt, ((lo < 0) & (hi > 0)).unsqueeze(1)


def relu_backward(
    a: torch.Tensor,
    bias: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    alpha: torch.Tensor | None,
    beta: torch.Tensor | None,
    relax: Relaxation | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the lower bound ``a . relu(z) + bias`` as one of the ReLU's input ``z``.

    ``a``: ``(B, m, *shape)``; ``lo``/``hi``: ``z``'s bounds ``(B, *shape)``; ``alpha``:
    lower slopes ``(B, m, *shape)`` used on unstable neurons (clipped to [0, 1]; None:
    CROWN-Ada). ``beta``: signed split multipliers ``beta * s`` ``(B, m, *shape)`` for
    split constraints ``s z >= 0`` (``s = +1`` active, ``-1`` inactive, 0 unsplit; the
    caller keeps ``beta >= 0``), or
    None: since ``s z >= 0`` on the subdomain, ``f >= f - beta s z`` there for
    ``beta >= 0``, which subtracts ``beta s`` from ``z``'s coefficient. ``relax``:
    :func:`relu_constants` of ``lo``/``hi`` if already computed (they depend on the
    bounds only, so an optimisation computes them once).
    """
    low, up, icpt, unstable = relax if relax is not None else relu_constants(lo, hi)
    if alpha is not None:
        low_m = torch.where(unstable, _project(alpha, 0.0, 1.0), low.unsqueeze(1))
    else:
        low_m = low.unsqueeze(1)
    pos, neg = a.clamp_min(0), a.clamp_max(0)
    bias = bias + (neg * icpt.unsqueeze(1)).flatten(2).sum(2)
    a = pos * low_m + neg * up.unsqueeze(1)
    if beta is not None:
        a = a - beta
    return a, bias


def relaxed_lower(
    layers: Sequence[Layer],
    a: torch.Tensor,
    bias: torch.Tensor,
    pre: Bounds,
    inp: InputSet,
    alpha: dict[int, torch.Tensor] | None = None,
    beta: dict[int, torch.Tensor] | None = None,
    record: dict[int, torch.Tensor] | None = None,
    end: int | None = None,
    relax: dict[int, Relaxation] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound over ``inp`` of ``a . out(layers[end]) + bias`` (default: the logits).

    ``a``: ``(B, m, *out_shape)``; ``pre``: input bounds of every nonlinear layer; ``alpha``/
    ``beta``: per ReLU layer index, as in :func:`relu_backward` (missing: CROWN-Ada, no
    split term); ``alpha`` also holds the weights of each max-pool layer it optimises, as
    in :func:`pool_backward` (missing: CROWN's max-pool relaxation). ``record``: if given,
    filled with the (detached) coefficient reaching each ReLU layer's output,
    ``(B, m, *shape)``, for branching heuristics. ``relax``: :func:`relu_constants` per
    ReLU layer, if already computed. Returns the bound ``(B, m)`` and the
    detached coefficient of the input ``(B, m, *in_shape)``
    (its sign gives the input that minimises the linear bound).
    """
    alpha = alpha or {}
    beta = beta or {}
    last = len(layers) - 1 if end is None else end
    pending: dict[int, torch.Tensor] = {}
    for i in range(last, -1, -1):
        layer = layers[i]
        if layer.kind == "relu":
            if record is not None:
                record[i] = a.detach()
            a, bias = relu_backward(a, bias, *pre[i], alpha.get(i), beta.get(i),
                                    None if relax is None else relax.get(i))  # fmt: skip
        elif layer.kind == "maxpool" and i in alpha:
            a, bias = pool_backward(layer, a, bias, *pre[i], alpha[i])
        else:
            a, bias = backward_layer(layer, a, bias, pre.get(i), pending)
    coef = a.detach().clone()
    return inp.lower(a, bias), coef


def optimize_bounds(
    layers: Sequence[Layer],
    spec: torch.Tensor,
    pre: Bounds,
    inp: InputSet,
    alpha: dict[int, torch.Tensor],
    beta: dict[int, torch.Tensor] | None = None,
    signs: dict[int, torch.Tensor] | None = None,
    *,
    iterations: int = 20,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    stop_above: float | None = None,
    end: int | None = None,
    deadline: float | None = None,
    record: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """Maximise the lower bound of ``spec . out(layers[end])`` (default: the logits) over
    ``alpha`` (and ``beta``).

    ``spec``: ``(B, m, *out_shape)``. ``alpha``: start slopes per ReLU layer ``(B, m, *shape)``
    (and start weights per max-pool layer, :func:`initial_pool`; both kept in [0, 1]);
    ``beta``: start multipliers ``>= 0`` of the split constraints, same shapes, with
    ``signs`` the split sign per neuron ``(B, *shape)`` (+1, -1 or 0); None: no splits.
    Adam ascent on the sum of the bounds, projected onto ``alpha`` in [0, 1] and
    ``beta >= 0``; ``iterations`` steps after the starting point. ``stop_above``: stop
    once every row's best bound exceeds it; ``deadline`` (a ``time.perf_counter()`` value):
    stop after the first iterate past it. Returns the best bound per row ``(B, m)``
    (every iterate is sound), the parameters that gave it, and the input coefficient of
    the best iterate ``(B, m, *in_shape)``. ``record``: if given, filled with the best
    iterate's coefficient reaching each ReLU layer's output (as :func:`relaxed_lower`'s).
    """
    bsz, m = spec.shape[:2]
    zero = torch.zeros(bsz, m, dtype=spec.dtype, device=spec.device)
    al = {i: v.detach().clone().requires_grad_(True) for i, v in alpha.items()}
    be = {i: v.detach().clone().requires_grad_(True) for i, v in (beta or {}).items()}
    sg = signs or {}
    params = [*al.values(), *be.values()]
    groups = [{"params": list(al.values()), "lr": lr_alpha}]
    if be:
        groups.append({"params": list(be.values()), "lr": lr_beta})
    opt = torch.optim.Adam(groups) if params else None
    best = torch.full((bsz, m), -math.inf, dtype=spec.dtype, device=spec.device)
    best_al = {i: v.detach().clone() for i, v in al.items()}
    best_be = {i: v.detach().clone() for i, v in be.items()}
    best_coef: torch.Tensor | None = None
    last = len(layers) - 1 if end is None else end
    relax = {i: relu_constants(*pre[i]) for i in relu_indices(layers[: last + 1])}
    for step in range(iterations + 1):
        signed = {i: v * sg[i].unsqueeze(1) for i, v in be.items()}
        seen: dict[int, torch.Tensor] | None = None if record is None else {}
        with torch.set_grad_enabled(opt is not None and step < iterations):
            bound, coef = relaxed_lower(layers, spec, zero, pre, inp, al, signed, seen, end=end,
                                        relax=relax)  # fmt: skip
        better = bound.detach() > best
        best = torch.where(better, bound.detach(), best)
        for src, dst in ((al, best_al), (be, best_be)):
            for i, v in src.items():
                mask = better.view(bsz, m, *([1] * (v.dim() - 2)))
                dst[i] = torch.where(mask, v.detach(), dst[i])
        mask = better.view(bsz, m, *([1] * (coef.dim() - 2)))
        best_coef = coef if best_coef is None else torch.where(mask, coef, best_coef)
        if record is not None and seen is not None:
            for i, v in seen.items():
                keep = better.view(bsz, m, *([1] * (v.dim() - 2)))
                record[i] = v if step == 0 else torch.where(keep, v, record[i])
        if opt is None or step == iterations:
            break
        if stop_above is not None and bool((best > stop_above).all()):
            break
        if deadline is not None and time.perf_counter() > deadline:
            break
        opt.zero_grad(set_to_none=True)
        (-bound.sum()).backward()
        opt.step()
        with torch.no_grad():
            for v in al.values():
                v.clamp_(0.0, 1.0)
            for v in be.values():
                v.clamp_min_(0.0)
    assert best_coef is not None
    return best, best_al, best_be, best_coef


@torch.no_grad()
def optimize_intermediate(
    layers: Sequence[Layer],
    pre: Bounds,
    inp: InputSet,
    *,
    iterations: int = 20,
    lr: float = 0.1,
    deadline: float | None = None,
) -> Bounds:
    """``pre`` with the unstable inputs of every ReLU layer after the first nonlinear layer
    re-bounded by alpha-CROWN (slopes of the earlier ReLUs and weights of the earlier
    max-pools optimised per neuron and bound direction), intersected with the old bounds;
    layer by layer, each using the tightened earlier ones. ``pre``: as from
    :func:`~sparserobust.verify.certification.bound_pass` (B points). ``deadline`` (a
    ``time.perf_counter()`` value): past it, each layer's optimisation stops after its
    current iterate and the later layers keep their bounds (every iterate is sound)."""
    out = dict(pre)
    relus = relu_indices(layers)
    first = next((j for j, layer in enumerate(layers) if layer.nonlinear), len(layers))
    for i in [r for r in relus if r > first]:
        if deadline is not None and time.perf_counter() > deadline:
            break
        lo, hi = out[i]
        cand = ((lo < 0) & (hi > 0)).flatten(1)
        counts = cand.sum(1)
        kmax = int(counts.max()) if counts.numel() else 0
        if kmax == 0:
            continue
        idx = torch.argsort(cand.to(torch.int8), dim=1, descending=True, stable=True)[:, :kmax]
        valid = torch.arange(kmax, device=lo.device).unsqueeze(0) < counts.unsqueeze(1)
        a, bias, nxt = start_rows(layers, i - 1, idx, lo.dtype)
        spec = torch.cat([a, -a], 1)
        alpha = initial_alpha(out, [r for r in relus if r <= nxt], 2 * kmax)
        pools = initial_pool(layers[: nxt + 1], out, 2 * kmax)
        alpha.update(pools)
        with torch.enable_grad():
            best = optimize_bounds(layers, spec, out, inp, alpha, iterations=iterations,
                                   lr_alpha=lr, end=nxt, deadline=deadline)[0]  # fmt: skip
        best = best + torch.cat([bias, -bias], 1)
        flo, fhi = lo.flatten(1).clone(), hi.flatten(1).clone()
        old_lo, old_hi = flo.gather(1, idx), fhi.gather(1, idx)
        new_lo = torch.where(valid, torch.maximum(old_lo, best[:, :kmax]), old_lo)
        new_hi = torch.where(valid, torch.minimum(old_hi, -best[:, kmax:]), old_hi)
        flo.scatter_(1, idx, new_lo)
        fhi.scatter_(1, idx, new_hi)
        out[i] = (flo.view_as(lo), fhi.view_as(hi))
    return out


@torch.no_grad()
def _alpha_margins(
    layers: Sequence[Layer], x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, p: float,
    pre: Bounds, crown: torch.Tensor, iterations: int, lr: float,
) -> torch.Tensor:  # fmt: skip
    """alpha-CROWN margins ``(B, K)`` (``inf`` at ``y``), at least CROWN's ``crown``."""
    k = layers[-1].out_shape[0]
    spec = margin_spec(y, k, x.dtype)
    inp = InputSet(x, eps, p)
    alpha = initial_params(layers, pre, k)
    with torch.enable_grad():
        best = optimize_bounds(layers, spec, pre, inp, alpha, iterations=iterations, lr_alpha=lr)[0]
    best = torch.maximum(best, crown)
    return best.scatter(1, y.view(-1, 1), math.inf)


def alpha_certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float | torch.Tensor,
    norm: float | str = "inf",
    iterations: int = 20,
    lr: float = 0.1,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
) -> CertifyResult:
    """Certify ``model`` on ``x`` ``(N, C, H, W)`` in [0,1] with labels ``y`` ``(N,)`` by
    alpha-CROWN; the result has ``method == "alpha"``, fields as :func:`certify`'s.

    Threat set: the l_p ball (``norm`` 2 or inf) of radius ``epsilon`` ([0,1] pixel
    space; one number or one per point) intersected with the [0,1] box. ``iterations``
    Adam steps of step size ``lr`` on the slopes, per batch of ``batch_size`` points.
    Margins are at least CROWN's (same intermediate bounds, best iterate kept), so
    IBP <= CROWN <= alpha-CROWN in certified accuracy. Runs in eval mode on the model's
    device, in ``dtype``.
    """
    if iterations < 0 or not lr > 0 or batch_size < 1:
        raise ConfigError("alpha_certify needs iterations >= 0, lr > 0 and batch_size >= 1")
    start = time.perf_counter()
    device = model_device(model)
    with eval_mode(model):
        p, layers = prepare_layers(model, x.to(device), norm, dtype)
        n = x.shape[0]
        eps = eps_vector(epsilon, n)
        y = check_labels(y, n, layers[-1].out_shape[0])
        margins, correct, unstable, unstable_ibp = [], [], [], []
        for i in range(0, n, batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            eb = eps[i : i + batch_size].to(device)
            with torch.no_grad():
                correct.append((model(xb).argmax(1) == yb).cpu())
            xd = xb.to(dtype)
            res = bound_pass(layers, xd, yb, eb, p, "crown")
            m = _alpha_margins(layers, xd, yb, eb, p, res.pre, res.margins, iterations, lr)
            margins.append(m.cpu())
            unstable.append(res.unstable.cpu())
            unstable_ibp.append(bound_pass(layers, xd, None, eb, p, "ibp").unstable.cpu())
    mm, cc = torch.cat(margins), torch.cat(correct)
    kinds = tuple(layer.kind for layer in layers if layer.nonlinear)
    seconds = time.perf_counter() - start
    log.info("alpha l%s: %d points in %.2fs", norm, n, seconds)
    eps_out = float(eps[0]) if n and bool((eps == eps[0]).all()) else math.nan
    return CertifyResult(
        "alpha", p, eps_out, mm, cc, cc & (mm > 0).all(1), torch.cat(unstable),
        torch.cat(unstable_ibp), kinds, seconds,
    )  # fmt: skip
