"""Local margin and gradient-norm terms: the first-order robustness bound of PAPER.md.

For a classifier with logits ``f`` and a point ``x`` it classifies as ``c``,
the class stays ``c`` for every perturbation ``d`` with (to first order)

    ||d||_p < min_j (f_c(x) - f_j(x)) / ||grad f_c(x) - grad f_j(x)||_q,

with ``1/p + 1/q = 1`` (l2: q = 2; l_inf: q = 1). For a linear model the
gradients are constant, so the ratio *is* the exact minimal l_p distance to the
decision boundary (the [0,1] box ignored); for a ReLU network it is the linear
bound of the local affine piece. All distances are in [0,1] pixel space of the
model's input; margins are in logit units; gradient norms in logit units per
unit of l_p distance.

This module also holds the helpers that CLEVER, the activation count and the
verifiers (:mod:`sparserobust.verify`) share: norm parsing, input checks and the
batched "all classes in one backward" gradient of the margins ``g_j = f_c - f_j``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from sparserobust.errors import ConfigError, DataError, ModelError
from sparserobust.norms import parse_norm
from sparserobust.utils import eval_mode, model_device

log = logging.getLogger(__name__)

__all__ = ["LocalBounds", "local_bounds"]


def dual_norm(p: float) -> float:
    """The dual exponent q of p (1/p + 1/q = 1) for p in {2, inf}: 2 -> 2, inf -> 1."""
    return 1.0 if math.isinf(p) else 2.0


def check_metric_inputs(x: torch.Tensor, name: str = "x") -> None:
    """Raise :class:`DataError` unless ``x`` is a non-empty float batch of finite [0,1] pixels."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise DataError(f"{name} must be a float tensor of images in [0,1], shape (N, C, H, W)")
    if x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty batch of shape (N, ...), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{name} contains NaN or inf: clean the inputs before measuring")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{name} must lie in [0,1] (got [{lo:.3g}, {hi:.3g}]): "
            "keep normalisation inside the model"
        )


def check_logits(logits: torch.Tensor, n: int) -> int:
    """The number of classes K of ``logits`` (shape ``(n, K)``); else :class:`ModelError`."""
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ModelError(
            f"model must return logits of shape (N, classes), got {tuple(logits.shape)} for N={n}"
        )
    if logits.shape[1] < 2:
        raise ModelError("model returns fewer than 2 class scores: a classifier needs at least 2")
    return int(logits.shape[1])


def other_classes(c: torch.Tensor, num_classes: int) -> torch.Tensor:
    """For labels ``c`` (shape ``(m,)``) the ``(m, K-1)`` table of all classes except ``c``."""
    k = torch.arange(num_classes - 1, device=c.device)
    return k.unsqueeze(0) + (k.unsqueeze(0) >= c.unsqueeze(1)).long()


def margin_gradient_norms(
    model: nn.Module, x: torch.Tensor, c: torch.Tensor, q: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Margins and dual-norm gradient norms of ``g_j = f_c - f_j`` for every ``j != c``.

    ``x``: inputs of shape ``(m, ...)`` on the model's device; ``c``: reference
    class per input, shape ``(m,)``; ``q``: 1 or 2, the norm taken of the
    gradient (flattened over the input, [0,1] pixel space).

    Returns ``(margins, grad_norms, others)``, each of shape ``(m, K-1)``:
    ``margins[i, k] = f_c(x_i) - f_j(x_i)`` with ``j = others[i, k]`` (logit
    units) and ``grad_norms[i, k] = ||grad_x g_j(x_i)||_q``. All K-1 gradients
    come from one vmapped backward pass (``is_grads_batched``); models whose ops
    do not support that fall back to K-1 ordinary backward passes.
    Call inside ``eval_mode``; parameters receive no gradient.
    """
    m = x.shape[0]
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        k = check_logits(logits, m)
        if int(c.min()) < 0 or int(c.max()) >= k:
            raise DataError(f"labels must lie in [0, {k - 1}] for a {k}-class model")
        others = other_classes(c, k)
        fc = logits.gather(1, c.view(-1, 1))
        margins = (fc - logits.gather(1, others)).detach()
        seeds = torch.zeros(k - 1, m, k, device=logits.device, dtype=logits.dtype)
        seeds.scatter_(2, c.view(1, -1, 1).expand(k - 1, m, 1), 1.0)
        seeds.scatter_(2, others.t().unsqueeze(2), -1.0)
        try:
            (grads,) = torch.autograd.grad(
                logits, xr, grad_outputs=seeds, is_grads_batched=True, retain_graph=True
            )
        except RuntimeError as exc:  # an op without a batching rule
            log.debug("batched gradients unavailable (%s); using %d backward passes", exc, k - 1)
            grads = torch.stack(
                [
                    torch.autograd.grad(logits, xr, grad_outputs=seeds[i], retain_graph=True)[0]
                    for i in range(k - 1)
                ]
            )
    flat = grads.reshape(k - 1, m, -1)
    norms = flat.abs().sum(dim=2) if q == 1.0 else flat.norm(p=2, dim=2)
    return margins, norms.t().contiguous(), others


@dataclass(frozen=True)
class LocalBounds:
    """Local margin, gradient-norm and ratio terms per correctly classified point.

    Shapes: ``M`` = number of correctly classified inputs, ``K`` classes. All
    tensors are float64 on the CPU.

    - ``indices`` ``(M,)``: positions of the correctly classified inputs in ``x``.
    - ``labels`` ``(M,)``: their (true = predicted) class ``c``.
    - ``margins`` ``(M, K)``: ``f_c(x) - f_j(x)`` in logit units (``inf`` at ``j = c``).
    - ``grad_norms`` ``(M, K)``: ``||grad f_c(x) - grad f_j(x)||_q`` (``nan`` at ``j = c``).
    - ``runner_up`` ``(M,)``: the class with the largest logit after ``c``;
      ``margin`` and ``grad_norm`` ``(M,)`` are the two terms for it.
    - ``ratio`` ``(M,)``: ``min_j margins / grad_norms``, an l_p distance in
      [0,1] pixel space (exact minimal distance for a linear model, box ignored);
      ``ratio_class`` ``(M,)`` is the minimising ``j``.
    - ``norm``: p (2.0 or inf); ``q`` the dual norm used for the gradients.
    """

    indices: torch.Tensor
    labels: torch.Tensor
    margins: torch.Tensor
    grad_norms: torch.Tensor
    runner_up: torch.Tensor
    margin: torch.Tensor
    grad_norm: torch.Tensor
    ratio: torch.Tensor
    ratio_class: torch.Tensor
    norm: float
    q: float
    n_inputs: int

    def summary(self) -> dict[str, float]:
        """Mean and median of margin, gradient norm (runner-up) and ratio; counts.

        Keys: ``n_inputs``, ``n_correct``, ``margin_mean``, ``margin_median``,
        ``grad_norm_mean``, ``grad_norm_median``, ``ratio_mean``, ``ratio_median``
        (``nan`` when no input is correctly classified).
        """
        out: dict[str, float] = {
            "n_inputs": float(self.n_inputs),
            "n_correct": float(self.indices.numel()),
        }
        for name, t in (
            ("margin", self.margin),
            ("grad_norm", self.grad_norm),
            ("ratio", self.ratio),
        ):
            empty = t.numel() == 0
            out[f"{name}_mean"] = math.nan if empty else float(t.mean())
            out[f"{name}_median"] = math.nan if empty else float(t.median())
        return out


def local_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: float | str = 2,
    batch_size: int = 256,
) -> LocalBounds:
    """Margin / gradient-norm terms of PAPER.md at each correctly classified input.

    ``x``: images in [0,1], shape ``(N, C, H, W)`` (any device; moved to the
    model's device); ``y``: true labels, shape ``(N,)``. ``norm``: the
    perturbation norm p, 2 or inf; gradients are measured in the dual norm q
    (2 for l2, 1 for l_inf). ``batch_size``: inputs per forward/backward pass
    (memory grows as ``batch_size * (K-1) * input size``).

    The model is put in eval mode and restored afterwards. Returns
    :class:`LocalBounds` (see there for units and shapes).
    """
    p = parse_norm(norm)
    q = dual_norm(p)
    check_metric_inputs(x)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"labels must be a tensor of shape ({x.shape[0]},) matching the inputs")
    device = model_device(model)
    idx_parts, lab_parts, marg_parts, gn_parts = [], [], [], []
    k = 0
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device).long()
            margins, norms, others = margin_gradient_norms(model, xb, yb, q)
            k = others.shape[1] + 1
            correct = (margins > 0).all(dim=1)
            full_m = torch.full((xb.shape[0], k), math.inf, dtype=torch.float64, device=device)
            full_g = torch.full((xb.shape[0], k), math.nan, dtype=torch.float64, device=device)
            full_m.scatter_(1, others, margins.double())
            full_g.scatter_(1, others, norms.double())
            idx_parts.append(torch.nonzero(correct).flatten().cpu() + start)
            lab_parts.append(yb[correct].cpu())
            marg_parts.append(full_m[correct].cpu())
            gn_parts.append(full_g[correct].cpu())
    indices = torch.cat(idx_parts)
    labels = torch.cat(lab_parts)
    margins_all = torch.cat(marg_parts).reshape(-1, k)
    grads_all = torch.cat(gn_parts).reshape(-1, k)
    rows = torch.arange(indices.numel())
    runner_up = margins_all.argmin(dim=1)
    with torch.no_grad():
        ratios = torch.where(
            torch.isnan(grads_all), torch.full_like(margins_all, math.inf), margins_all / grads_all
        )
    ratio, ratio_class = ratios.min(dim=1)
    result = LocalBounds(
        indices=indices,
        labels=labels,
        margins=margins_all,
        grad_norms=grads_all,
        runner_up=runner_up,
        margin=margins_all[rows, runner_up],
        grad_norm=grads_all[rows, runner_up],
        ratio=ratio,
        ratio_class=ratio_class,
        norm=p,
        q=q,
        n_inputs=int(x.shape[0]),
    )
    log.info(
        "local bounds (l%s): %d of %d inputs correct, median ratio %.4g",
        "inf" if math.isinf(p) else "2",
        indices.numel(),
        x.shape[0],
        float(ratio.median()) if ratio.numel() else math.nan,
    )
    return result
