"""Square Attack (Andriushchenko et al. 2020): gradient-free random search, l_inf and l2.

The attack only reads the model's logits, so it is immune to gradient masking
(zero, shattered or saturated input gradients) and serves as the control for
gradient attacks: where it finds adversarials that PGD missed, PGD's robust
accuracy is too optimistic (see :func:`sparserobust.metrics.checks.gradient_free_flags`).

Geometry. Inputs are viewed as images ``(N, C, H, W)``: ``(N, C, H, W)`` as
given, ``(N, H, W)`` as one channel ``(N, 1, H, W)``, flat ``(N, d)`` (and any
other shape, flattened) as a one-pixel-high strip ``(N, 1, 1, d)``. On a strip
a "square" is a segment of ``p * d`` consecutive coordinates (the same share of
coordinates as a ``p * H * W`` square on an image), and the l_inf stripes
initialisation gives every coordinate its own random sign.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparserobust.attacks.base import SAFETY_MARGIN, FixedEpsilonAttack
from sparserobust.attacks.norms import INF, lp_norms, parse_norm
from sparserobust.errors import AttackError
from sparserobust.models.common import Normalize
from sparserobust.utils import forward

_SCHEDULE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
"""Iterations (of the paper's 10000) after which the square's share of pixels halves."""

_STOP_MARGIN = 2 * SAFETY_MARGIN
"""A point leaves the working batch once the best other class beats the label by this
(twice the margin the driver demands, so that batch-dependent rounding cannot undo it)."""


INCREMENTAL = True
"""l_inf proposals change one window of the input; where the model starts with an affine
layer (``[Normalize,] Flatten, Linear``), its pre-activations are updated from that
window's columns instead of recomputed (:class:`AffineHead`). Tests switch it off to
compare with the plain forward pass."""

_REFRESH = 100
"""Iterations between exact recomputations of the incrementally updated pre-activations."""


class AffineHead:
    """The leading affine part ``h(x) = W (x - mean) / std + b`` of an ``nn.Sequential``
    model that starts with ``[Normalize,] Flatten(start_dim=1), Linear`` on image inputs
    ``(N, C, H, W)``, and the rest of the model as ``tail``.

    ``h(x')`` for an ``x'`` that differs from ``x`` only inside a window costs the
    window's columns of ``W`` instead of all of them (:meth:`update`). The pre-activations
    are the same function of the input as the model's own; only the summation order
    differs (float rounding).
    """

    def __init__(self, model: nn.Sequential, index: int, norm: Normalize | None) -> None:
        linear = model[index]
        assert isinstance(linear, nn.Linear)
        self.linear = linear
        self.tail = model[index + 1 :]
        self.norm = norm

    @classmethod
    def of(cls, model: nn.Module, x: torch.Tensor) -> AffineHead | None:
        """The head of ``model`` for inputs like ``x``, or None where the model does not
        start that way (or carries hooks that could change its forward pass)."""
        if not isinstance(model, nn.Sequential) or x.ndim != 4:
            return None
        if model._forward_hooks or model._forward_pre_hooks:
            return None
        norm = None
        for i, m in enumerate(model):
            if isinstance(m, Normalize) and norm is None and i == 0:
                norm = m
            elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                continue
            elif isinstance(m, nn.Linear) and i > 0 and isinstance(model[i - 1], nn.Flatten):
                return cls(model, i, norm) if m.in_features == x[0].numel() else None
            else:
                return None
        return None

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm is None else (x - self.norm.mean) / self.norm.std

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` ``(N, out)``, computed in full."""
        return self.linear(self._scaled(x).flatten(1))

    def update(
        self, h: torch.Tensor, x_win: torch.Tensor, new_win: torch.Tensor, win: tuple, shape: tuple
    ) -> torch.Tensor:
        """``h(x')`` from ``h = h(x)`` where ``x'`` equals ``x`` except that the window
        ``win`` of ``x`` (values ``x_win``) holds ``new_win``."""
        _, c, hh, ww = shape
        rows = torch.arange(hh, device=h.device)[win[2]]
        cols = torch.arange(ww, device=h.device)[win[3]]
        chans = torch.arange(c, device=h.device)
        flat = (chans[:, None, None] * hh + rows[None, :, None]) * ww + cols[None, None, :]
        delta = new_win - x_win
        if self.norm is not None:
            delta = delta / self.norm.std
        weight = self.linear.weight[:, flat.flatten()]
        return h + delta.flatten(1) @ weight.t()

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.tail(h)


def p_schedule(p_init: float, it: int, steps: int, rescale: bool = True) -> float:
    """The paper's piecewise-constant share of pixels changed at iteration ``it``:
    ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
    8000 of 10000, with the schedule rescaled to ``steps`` iterations when
    ``rescale`` (else applied to the raw iteration count, as AutoAttack does)."""
    t = int(it / steps * 10000) if rescale else it
    return p_init / 2 ** sum(t > b for b in _SCHEDULE_BOUNDS)


def as_image(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` as ``(N, C, H, W)``: 4-d as is, ``(N, H, W)`` -> ``(N, 1, H, W)``,
    anything else flattened to a strip ``(N, 1, 1, d)``."""
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], 1, 1, -1)


def window_shape(
    area: float, h: int, w: int, minimum: int = 1, odd: bool = False
) -> tuple[int, int]:
    """Height and width of a window covering about ``area`` pixels of an ``h x w``
    image: a square of side ``round(sqrt(area))`` (at least ``minimum``, at most
    ``min(h, w) - 1`` as in the paper, odd when ``odd``), or on a strip
    (``h == 1`` or ``w == 1``) a segment of ``round(area)`` pixels."""
    strip = h == 1 or w == 1
    length = max(h, w) if strip else min(h, w)
    side = round(area) if strip else round(math.sqrt(area))
    side = min(max(side, minimum), max(length - 1, 1))
    if odd and side % 2 == 0:
        side = side + 1 if side + 1 <= length - 1 else max(side - 1, 1)
    if not strip:
        return side, side
    return (1, side) if h == 1 else (side, 1)


def _signs(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform random +-1 of ``shape`` (dtype and device of ``like``)."""
    bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
    return bits.to(like.dtype) * 2 - 1


def _window(
    h: int, w: int, sh: int, sw: int, gen: torch.Generator, device: torch.device
) -> tuple[slice, slice, slice, slice]:
    """Index of an ``sh x sw`` window at a uniform random position inside ``h x w``
    (all channels, all samples of the batch)."""
    r0 = int(torch.randint(0, h - sh + 1, (1,), generator=gen, device=device))
    c0 = int(torch.randint(0, w - sw + 1, (1,), generator=gen, device=device))
    return slice(None), slice(None), slice(r0, r0 + sh), slice(c0, c0 + sw)


def _rings(a: int, b: int, device: torch.device) -> torch.Tensor:
    """An ``a x b`` bump: concentric rectangular rings around the centre, ring ``r``
    worth ``sum_{k >= r} 1 / (k + 1)^2`` (a discrete, heavy-centred Gaussian), unit l2."""
    ring = torch.maximum(
        (torch.arange(a, device=device) - a // 2).abs()[:, None],
        (torch.arange(b, device=device) - b // 2).abs()[None, :],
    )
    k = max(a // 2, b // 2) + 1
    weights = 1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    out = tail[ring]
    return out / out.norm()


def bump(sh: int, sw: int, device: torch.device) -> torch.Tensor:
    """The paper's l2 update pattern ``(sh, sw)``: two bumps of opposite sign side
    by side, split along the longer side (rows for a square), unit l2 norm."""
    if sh * sw == 1:
        return torch.ones(1, 1, device=device)
    if sh >= sw:
        half = sh // 2
        out = torch.cat([_rings(half, sw, device), -_rings(sh - half, sw, device)], 0)
    else:
        half = sw // 2
        out = torch.cat([_rings(sh, half, device), -_rings(sh, sw - half, device)], 1)
    return out / out.norm()


def margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Margin loss ``(N,)`` to *decrease*; negative exactly when adversarial.

    Untargeted: label logit minus the best other logit; targeted (``labels`` are
    the targets): best other logit minus the target logit."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], -torch.inf).amax(1)
    return other - own if targeted else own - other


class Square(FixedEpsilonAttack):
    """Square Attack: score-based random search in an l_inf or l2 ball of radius
    eps ([0,1] pixel units), after Andriushchenko et al. (2020).

    Each restart spends at most ``steps`` forward passes ("queries") per point
    and epsilon: one on the initial point (l_inf: vertical stripes of +-eps,
    one random sign per column and channel; l2: a grid of opposite-sign bumps
    scaled to norm eps), then ``steps - 1`` proposals that redraw one random
    window of side ``sqrt(p * H * W)`` (l_inf: a constant +-eps per channel;
    l2: a bump that moves the mass of a second window into the first, keeping
    ``||delta||_2 = eps`` before clipping to [0,1]). A proposal replaces the
    current point only when it lowers the margin loss (label logit minus best
    other logit; targeted: best other logit minus target logit). The share
    ``p`` follows the paper's schedule, starting at ``p_init`` (0.8, the
    paper's MNIST l_inf setting) and halving at iterations 10, 50, 200, ...,
    8000 of 10000, rescaled to ``steps`` (``rescale_schedule=False``: at those
    raw iteration counts, AutoAttack's setting for its 5000 queries). Points
    leave the batch once clearly adversarial, so only the still-robust points
    are queried. ``restarts`` re-runs the attack from a fresh random start on
    the points not yet broken.
    No gradients are computed; all randomness comes from the run's seed.
    See the module docstring for non-image inputs.
    """

    name = "square"

    def __init__(
        self,
        norm: float | str = INF,
        steps: int = 1000,
        p_init: float | None = None,
        restarts: int = 1,
        batch_size: int = 1000,
        rescale_schedule: bool = True,
    ) -> None:
        super().__init__(batch_size)
        self.norm = parse_norm(norm)
        self.steps = int(steps)
        self.p_init = float(p_init if p_init is not None else 0.8)
        self.rescale_schedule = bool(rescale_schedule)
        self.restarts = int(restarts)
        if self.steps < 1 or self.restarts < 1:
            raise AttackError(f"Square needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
        if not 0 < self.p_init <= 1:
            raise AttackError(f"Square needs 0 < p_init <= 1, got {self.p_init}")

    @torch.no_grad()
    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        out = x.clone()
        out_loss = torch.full((x.shape[0],), torch.inf, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):  # each restart keeps the better of its and earlier runs
            if todo.numel() == 0:
                break
            adv, loss = self._one_run(model, x[todo], labels[todo], targeted, gen, epsilon)
            better = loss < out_loss[todo]
            out[todo[better]] = adv[better]
            out_loss[todo[better]] = loss[better]
            todo = todo[out_loss[todo] >= -_STOP_MARGIN]
        return out

    # -- one random-search run -----------------------------------------------------------

    def _one_run(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (best point found ``x0.shape``, its margin loss ``(B,)``)."""
        shape = x0.shape
        img = as_image(x0)

        def loss_of(xi: torch.Tensor, labs: torch.Tensor) -> torch.Tensor:
            return margin(forward(model, xi.reshape(-1, *shape[1:])), labs, targeted)

        linf = self.norm == INF
        best = self._init_linf(img, eps, gen) if linf else self._init_l2(img, eps, gen)
        loss = loss_of(best, labels)  # (a full forward pass also runs the pruning hooks)
        fast = AffineHead.of(model, img) if linf and INCREMENTAL else None
        h = fast.head(best) if fast is not None else None
        for it in range(self.steps - 1):
            idx = (loss >= -_STOP_MARGIN).nonzero().flatten()
            if idx.numel() == 0:
                break
            p = p_schedule(self.p_init, it, self.steps, self.rescale_schedule)
            everyone = idx.numel() == loss.numel()
            xi, bi = (img, best) if everyone else (img[idx], best[idx])
            if linf:
                cand, win = self._propose_linf(xi, bi, eps, p, gen)
            else:
                cand = self._propose_l2(xi, bi, eps, p, gen)
            if fast is not None and h is not None:
                if it % _REFRESH == _REFRESH - 1:  # bound the rounding drift
                    h = fast.head(best)
                h_new = fast.update(h[idx], bi[win], cand[win], win, tuple(img.shape))
                new = margin(fast.logits(h_new), labels[idx], targeted)
            else:
                new = loss_of(cand, labels[idx])
            better = new < loss[idx]
            loss[idx[better]] = new[better]
            best[idx[better]] = cand[better]
            if h is not None:
                h[idx[better]] = h_new[better]
        return best.reshape(shape), loss

    # -- l_inf ---------------------------------------------------------------------------

    @staticmethod
    def _init_linf(img: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        b, c, _, w = img.shape
        return (img + eps * _signs((b, c, 1, w), gen, img)).clamp(0.0, 1.0)

    @staticmethod
    def _propose_linf(
        img: torch.Tensor, best: torch.Tensor, eps: float, p: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, tuple[slice, slice, slice, slice]]:
        """Set one random window to ``x + s * eps``, one random sign ``s`` per sample
        and channel, redrawing the signs (up to 3 times) where that changes nothing.
        Returns the candidates and the window's index."""
        b, c, h, w = img.shape
        sh, sw = window_shape(p * h * w, h, w)
        win = _window(h, w, sh, sw, gen, img.device)
        x_win, best_win = img[win], best[win]
        new = (x_win + eps * _signs((b, c, 1, 1), gen, img)).clamp(0.0, 1.0)
        rows = torch.arange(b, device=img.device)
        for _ in range(3):
            same = (new[rows] - best_win[rows]).abs().flatten(1).amax(1) < 1e-7
            rows = rows[same]
            if rows.numel() == 0:
                break
            sign = _signs((rows.numel(), c, 1, 1), gen, img)
            new[rows] = (x_win[rows] + eps * sign).clamp(0.0, 1.0)
        cand = best.clone()
        cand[win] = new
        return cand, win

    # -- l2 ------------------------------------------------------------------------------

    @staticmethod
    def _init_l2(img: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        """A centred grid of bumps (5 x 5 on images, 25 on a strip), one random sign per
        tile and channel, scaled to l2 norm eps, clipped to [0,1]."""
        b, c, h, w = img.shape
        if h == 1 or w == 1:
            nh, nw = (1, min(25, w)) if h == 1 else (min(25, h), 1)
        else:
            nh, nw = min(5, h), min(5, w)
        th, tw = h // nh, w // nw
        pattern = bump(th, tw, img.device).to(img.dtype)
        signs = _signs((b, c, nh, 1, nw, 1), gen, img)
        grid = (signs * pattern[:, None, :]).reshape(b, c, nh * th, nw * tw)
        delta = torch.zeros_like(img)
        top, left = (h - nh * th) // 2, (w - nw * tw) // 2
        delta[:, :, top : top + nh * th, left : left + nw * tw] = grid
        return _rescale(img, delta, eps)

    @staticmethod
    def _propose_l2(
        img: torch.Tensor, best: torch.Tensor, eps: float, p: float, gen: torch.Generator
    ) -> torch.Tensor:
        """Draw two windows; per sample and channel, empty the second and put into the
        first the old first window's direction plus a random-sign bump, carrying the
        l2 mass of both windows and the unused budget; rescale to norm eps and clip."""
        b, c, h, w = img.shape
        sh, sw = window_shape(p * h * w, h, w, minimum=3, odd=True)
        win1 = _window(h, w, sh, sw, gen, img.device)
        win2 = _window(h, w, sh, sw, gen, img.device)
        pattern = bump(sh, sw, img.device).to(img.dtype).expand(b, 1, sh, sw)
        if sh == sw:  # a random orientation per sample: split top/bottom or left/right
            flip = torch.randint(0, 2, (b, 1, 1, 1), generator=gen, device=img.device).bool()
            pattern = torch.where(flip, pattern.transpose(2, 3), pattern)
        delta = best - img
        union = torch.zeros(h, w, dtype=torch.bool, device=img.device)
        union[win1[2:]] = True
        union[win2[2:]] = True
        free = (eps**2 - delta.pow(2).flatten(1).sum(1)).clamp_min(0.0)[:, None, None, None] / c
        both = (delta.pow(2) * union).sum((2, 3), keepdim=True)
        old = delta[win1]
        old = old / (old.pow(2).sum((2, 3), keepdim=True).sqrt() + 1e-10)
        new = pattern * _signs((b, c, 1, 1), gen, img) + old
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        delta[win2] = 0.0
        delta[win1] = new * (free + both).sqrt()
        return _rescale(img, delta, eps)


def _rescale(img: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``clip(img + eps * delta / ||delta||_2)`` per sample (clipping only shrinks the norm)."""
    norms = lp_norms(delta, 2).clamp_min(1e-12)
    return (img + delta * (eps / norms)[:, None, None, None]).clamp(0.0, 1.0)
