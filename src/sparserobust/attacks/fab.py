"""Fast Adaptive Boundary attack (Croce & Hein 2020, FAB), targeted, l_inf and l2.

FAB walks to the decision boundary by repeatedly linearising the model: at the
current iterate it takes the hyperplane on which the linearised logit difference
``f_t - f_y`` (target minus label) vanishes, projects both the iterate and the
clean input onto it (minimal l_p step inside the [0,1] box, see
:func:`box_hyperplane_step`), and moves to a convex combination of the two
projections biased towards the clean input. Once an iterate is adversarial it
is pulled back towards the clean input (a backward step), so the attack keeps
shrinking the perturbation.

Two attacks share that core:

* :class:`FABTargeted` (``fab-t``), fixed-epsilon: AutoAttack's FAB-T, which
  counts a point as broken when an adversarial of norm <= eps was found;
* :class:`FAB` (``fab``), minimisation: the smallest adversarial found over the
  top target classes (and optional random restarts), for minimal-norm curves.

Norms are measured in [0,1] pixel space on the flattened input.
"""

from __future__ import annotations

import torch
from torch import nn

from sparserobust.attacks.base import (
    Attack,
    FixedEpsilonAttack,
    MinimizationAttack,
    clearly_adversarial,
    shrink_along_ray,
)
from sparserobust.attacks.norms import INF, lp_norms, parse_norm
from sparserobust.errors import AttackError

_BIG = 1e30
"""Stands in for an infinite breakpoint (a coordinate that never saturates)."""


def box_hyperplane_step(
    t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, p: float
) -> torch.Tensor:
    """Minimal-l_p step to a hyperplane inside the [0,1] box, exactly.

    For points ``t`` ``(B, d)`` in [0,1], normals ``w`` ``(B, d)`` and offsets
    ``c`` ``(B,)``, returns ``d`` ``(B, d)`` minimising ``||d||_p`` (p = 2 or inf)
    subject to ``w . d = c`` and ``0 <= t + d <= 1``. Where no step inside the box
    reaches the hyperplane, returns the box corner that gets closest (every
    coordinate with ``w_i != 0`` pushed to its bound in the direction of ``c``).

    The minimiser is ``d_i = clip(tau * v_i, -t_i, 1 - t_i)`` with ``v = w`` (l2)
    or ``v = sign(w)`` (l_inf) and the scalar ``tau >= 0`` (after flipping signs
    so that ``c >= 0``) at which ``w . d`` reaches ``c``; ``w . d(tau)`` is
    piecewise linear and non-decreasing in ``tau``, with a kink where each
    coordinate reaches its bound, so sorting the kinks gives ``tau`` in closed form.
    """
    sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * sign[:, None]
    c = c * sign
    # float masks instead of torch.where: several times cheaper on CPU
    sgn = w.sign()
    mag = sgn.abs()  # 1 where w != 0
    if p != 2:
        # l_inf (v = sign(w)): coordinate i moves by tau towards its bound until it sits
        # there, at kink_i = 1 - t_i (w_i > 0) or t_i (w_i < 0); 0 where w_i == 0. The
        # same numbers as the general branch, in fewer passes over (B, d).
        kink = torch.where(w > 0, 1.0 - t, t) * mag
        slope = w.abs()
        gain = slope * kink
        tau = _solve_tau(kink, slope, gain, c)
        return sgn * torch.minimum(tau[:, None], kink)
    lo, hi = -t, 1.0 - t
    bound = 0.5 * (mag + sgn) * hi + 0.5 * (mag - sgn) * lo  # hi where w > 0, lo where w < 0
    # the tau at which coordinate i reaches its bound, bound / w; where w == 0 the
    # coordinate has no slope and no gain, and a kink at 0 changes nothing
    kink = (bound / (w + (1.0 - mag))).clamp_min(0.0)
    slope = w * w  # d(w_i d_i)/d tau while coordinate i is free (>= 0)
    gain = w * bound  # w_i d_i once coordinate i sits at its bound (>= 0; 0 where w == 0)
    tau = _solve_tau(kink, slope, gain, c)
    return torch.minimum(torch.maximum(tau[:, None] * w, lo), hi)  # 0 where w == 0 (t in box)


def _solve_tau(
    kink: torch.Tensor, slope: torch.Tensor, gain: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """:func:`_tau_by_newton`, with :func:`_tau_by_sorting` for the rows it leaves."""
    tau, done = _tau_by_newton(kink, slope, gain, c)
    if not bool(done.all()):
        rest = (~done).nonzero().flatten()
        tau[rest] = _tau_by_sorting(kink[rest], slope[rest], gain[rest], c[rest])
    return tau


_NEWTON_STEPS = 12
"""Newton iterations of :func:`_tau_by_newton` before the rows left fall back to sorting."""


def _tau_by_newton(
    kink: torch.Tensor, slope: torch.Tensor, gain: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest ``tau >= 0`` with ``r(tau) = sum_i min(slope_i tau, gain_i) = c``
    (``slope_i tau`` while ``tau < kink_i``, ``gain_i = slope_i kink_i`` after), by
    Newton's method from ``tau = 0``.

    ``r`` is concave, piecewise linear and non-decreasing, so each Newton step (the
    zero of the linear piece at the current ``tau``) stays at or below the answer and
    passes at least one kink until it lands on it: when a step saturates no new
    coordinate, ``tau`` is exact. Returns ``(tau (B,), done (B,))``; where ``c`` cannot
    be reached, ``tau`` is ``_BIG`` and done.
    """
    # masks as floats: multiply-and-sum is several times cheaper than torch.where on CPU
    tau = torch.zeros_like(c)
    sat = torch.ge(tau[:, None], kink).to(kink.dtype)  # 1 where saturated at tau
    count = sat.sum(1)
    done = torch.zeros(c.shape, dtype=torch.bool, device=c.device)
    for _ in range(_NEWTON_STEPS):
        fixed = torch.linalg.vecdot(gain, sat)
        free = torch.linalg.vecdot(slope, 1.0 - sat)
        flat = free <= 0
        step = (c - fixed) / torch.where(flat, 1.0, free)
        # all saturated: r is flat at `fixed` from here on (reached at tau, or never)
        step = torch.where(flat, torch.where(fixed >= c, tau, torch.full_like(tau, _BIG)), step)
        tau = torch.maximum(step, tau)
        sat = torch.ge(tau[:, None], kink).to(kink.dtype)
        new_count = sat.sum(1)  # tau never decreases: the saturated set only grows
        done = (new_count == count) | flat
        count = new_count
        if bool(done.all()):
            break
    return tau, done


def _tau_by_sorting(
    kink: torch.Tensor, slope: torch.Tensor, gain: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """:func:`_tau_by_newton`'s ``tau`` in closed form, by sorting the kinks."""
    n = kink.shape[1]
    kink_s, order = kink.sort(dim=1)
    slope_s, gain_s = slope.gather(1, order), gain.gather(1, order)
    free = slope_s.flip(1).cumsum(1).flip(1)  # slope of the coordinates from k on (free at kink k)
    fixed = gain_s.cumsum(1) - gain_s  # gain of the coordinates before k (saturated at kink k)
    reach = kink_s * free + fixed  # w . d(tau) at each kink, non-decreasing
    reach = torch.where(free > 0, reach, fixed + gain_s)
    m = (reach < c[:, None]).sum(1)  # kinks passed before reaching c
    ok = m < n
    mi = m.clamp(max=n - 1)[:, None]
    tau = (c - fixed.gather(1, mi).squeeze(1)) / free.gather(1, mi).squeeze(1).clamp_min(1e-30)
    return torch.where(ok, tau, torch.full_like(tau, _BIG))


class _FABCore(Attack):
    """FAB's iteration, shared by the fixed-epsilon and the minimisation attack."""

    def __init__(
        self,
        norm: float | str = INF,
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.norm = parse_norm(norm)
        self.steps = int(steps)
        self.n_target_classes = int(n_target_classes)
        self.restarts = int(restarts)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)
        if self.steps < 1 or self.restarts < 1 or self.n_target_classes < 1:
            raise AttackError(
                "FAB needs steps >= 1, restarts >= 1 and n_target_classes >= 1, got "
                f"{steps}, {restarts}, {n_target_classes}"
            )
        if not (0 <= self.alpha_max <= 1 and self.eta >= 1 and 0 < self.beta < 1):
            raise AttackError(
                f"FAB needs 0 <= alpha_max <= 1, eta >= 1 and 0 < beta < 1, got "
                f"{alpha_max}, {eta}, {beta}"
            )

    def _diff_and_grad(
        self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)``, ``f_t - f_y`` ``(B,)`` and its input gradient ``(B, d)``."""
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            diff = logits.gather(1, targets[:, None]) - logits.gather(1, labels[:, None])
            (grad,) = torch.autograd.grad(diff.sum(), xr)
        return logits.detach(), diff.detach().squeeze(1), grad.flatten(1)

    def fab_run(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor,
        gen: torch.Generator,
        start_radius: torch.Tensor | None = None,
        stop_at: float | None = None,
        targeted: bool = False,
        group: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB run of ``steps`` iterations linearising ``f_target - f_label``.

        ``start_radius`` ``(B,)``: start from a random point at half that l_p
        distance (else from ``x0``). ``stop_at``: a point leaves the batch once
        it has an adversarial at distance <= ``stop_at``; with ``group`` ``(B,)``
        (ids >= 0), so do all the rows of its group. Success is "predicted
        as ``targets``" when ``targeted``, else "not predicted as ``labels``".
        Returns ``(smallest adversarial found or x0 (B, ...), its l_p norm or inf (B,))``.
        """
        shape = x0.shape
        b = shape[0]
        flat0 = x0.flatten(1)
        best = flat0.clone()
        best_norm = torch.full((b,), torch.inf, device=x0.device)
        idx = torch.arange(b, device=x0.device)
        xs, labs, tgts = flat0, labels, targets
        x1 = flat0.clone()
        if start_radius is not None:
            r = torch.rand if self.norm == INF else torch.randn
            noise = r(flat0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            if self.norm == INF:
                noise = noise * 2 - 1
            noise = noise / lp_norms(noise, self.norm).clamp_min(1e-12)[:, None]
            x1 = (flat0 + 0.5 * start_radius[:, None] * noise).clamp(0.0, 1.0)
        slabs = tgts if targeted else labs
        grp = group
        for _ in range(self.steps):
            _, df, dg = self._diff_and_grad(model, x1.view(-1, *shape[1:]), labs, tgts)
            # the linearised boundary {z : df + dg . (z - x1) = 0}, reached from x1 and from x0
            d1 = box_hyperplane_step(x1, dg, -df, self.norm)
            d2 = box_hyperplane_step(xs, dg, -df - (dg * (xs - x1)).sum(1), self.norm)
            a1 = lp_norms(d1, self.norm).clamp_min(1e-8)
            a2 = lp_norms(d2, self.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max)[:, None]
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (xs + self.eta * d2) * alpha).clamp(0, 1)
            with torch.no_grad():
                logits = model(x1.view(-1, *shape[1:]))
            # margin 0, as the official code: FAB's iterates hug the boundary
            adv = clearly_adversarial(logits, slabs, targeted, margin=0.0)
            if bool(adv.any()):
                dist = lp_norms(x1 - xs, self.norm)
                better = adv & (dist < best_norm[idx])
                best[idx[better]] = x1[better]
                best_norm[idx[better]] = dist[better]
                x1 = torch.where(adv[:, None], xs + self.beta * (x1 - xs), x1)
                if stop_at is not None:
                    keep = best_norm[idx] > stop_at
                    if grp is not None and not bool(keep.all()):
                        gone = torch.zeros(int(grp.max()) + 1, dtype=torch.bool, device=x0.device)
                        gone[grp[~keep]] = True
                        keep = ~gone[grp]
                    grp = None if grp is None else grp[keep]
                    idx, xs, labs, tgts, slabs = (
                        idx[keep],
                        xs[keep],
                        labs[keep],
                        tgts[keep],
                        slabs[keep],
                    )
                    x1 = x1[keep]
                    if idx.numel() == 0:
                        break
        return best.view(shape), best_norm

    def _ranked_targets(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Classes ``(B, K)`` by decreasing clean logit (column 0: the predicted class)."""
        with torch.no_grad():
            return model(x).argsort(dim=1, descending=True)


class FABTargeted(_FABCore, FixedEpsilonAttack):
    """FAB-T as run by AutoAttack's standard version: targeted FAB against each of
    the ``n_target_classes`` classes the model ranks highest after the true one
    (9 by default), ``steps`` (100) iterations each from the clean input, on the
    points not yet broken; a point is broken once FAB finds an adversarial within
    the l_inf or l2 ball of radius eps ([0,1] pixel units).

    The linearised objective is targeted (``f_t - f_y``) but, as in AutoAttack,
    a point counts as broken by any misclassification. ``restarts > 1`` adds
    runs from random starts at half the radius ``eps`` (AutoAttack's FAB-T uses 1).
    ``alpha_max`` (0.1), ``eta`` (1.05, overshoot) and ``beta`` (0.9, backward
    step) are the paper's. With ``target`` given to :meth:`Attack.run`, it runs
    against that class only and succeeds only on it.
    """

    name = "fab-t"

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        b = x.shape[0]
        out = x.clone()
        if targeted:
            with torch.no_grad():
                own = model(x).argmax(1)
            columns = [labels]
        else:
            ranked = self._ranked_targets(model, x)
            own = labels
            columns = [
                ranked[:, r] for r in range(1, min(self.n_target_classes + 1, ranked.shape[1]))
            ]
        todo = torch.arange(b, device=x.device)
        if self.restarts == 1 and len(columns) > 1:
            return self._all_targets_at_once(model, x, own, columns, gen, epsilon, targeted)
        for tg in columns:
            for restart in range(self.restarts):
                if todo.numel() == 0:
                    return out
                radius = None
                if restart > 0:
                    radius = torch.full((todo.numel(),), epsilon, device=x.device)
                adv, dist = self.fab_run(
                    model, x[todo], own[todo], tg[todo], gen, radius, epsilon, targeted
                )
                broken = dist <= epsilon
                out[todo[broken]] = adv[broken]
                todo = todo[~broken]
        return out

    def _all_targets_at_once(
        self,
        model: nn.Module,
        x: torch.Tensor,
        own: torch.Tensor,
        columns: list[torch.Tensor],
        gen: torch.Generator,
        epsilon: float,
        targeted: bool,
    ) -> torch.Tensor:
        """The target loop of :meth:`attack_batch` with one start per target, run on
        several targets at a time (up to ``_ROWS`` rows): a run from the clean input
        has no randomness and depends on its (point, target) pair only, so a point is
        broken exactly when the one-target-at-a-time loop would break it, and all its
        rows leave the batch at once. The adversarial kept is that of its
        highest-ranked target that reached ``epsilon``."""
        b = x.shape[0]
        out = x.clone()
        todo = torch.arange(b, device=x.device)
        per = max(1, _ROWS // max(b, 1))
        for first in range(0, len(columns), per):
            if todo.numel() == 0:
                break
            cols = columns[first : first + per]
            k, n = len(cols), todo.numel()
            reps = (k,) + (1,) * (x.ndim - 1)
            group = torch.arange(n, device=x.device).repeat(k)
            tg = torch.cat([c[todo] for c in cols])
            adv, dist = self.fab_run(
                model,
                x[todo].repeat(reps),
                own[todo].repeat(k),
                tg,
                gen,
                None,
                epsilon,
                targeted,
                group,
            )
            hit = (dist <= epsilon).view(k, n)
            broken = hit.any(0)
            which = hit.float().argmax(0)  # the first target (in rank order) that reached eps
            pick = adv.view(k, n, *x.shape[1:])[which, torch.arange(n, device=x.device)]
            out[todo[broken]] = pick[broken]
            todo = todo[~broken]
        return out


_ROWS = 4096
"""Rows (points x targets) FAB-T runs at once."""


class FAB(_FABCore, MinimizationAttack):
    """Minimal-norm FAB, l_inf or l2: the smallest adversarial found by targeted
    FAB against each of the ``n_target_classes`` (9) classes ranked highest
    after the true one, ``steps`` (100) iterations each from the clean input,
    plus ``restarts - 1`` runs per target from random points at half the best
    distance found so far; finally each adversarial is shrunk towards the clean
    input along its ray (10 bisection steps). Distances are l_p norms in [0,1]
    pixel space. A point is adversarial when not predicted as its label
    (targeted runs: predicted as the target).
    """

    name = "fab"

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
    ) -> torch.Tensor:
        b = x.shape[0]
        best = x.clone()
        best_norm = torch.full((b,), torch.inf, device=x.device)
        if targeted:
            with torch.no_grad():
                own = model(x).argmax(1)
            columns = [labels]
        else:
            ranked = self._ranked_targets(model, x)
            own = labels
            columns = [
                ranked[:, r] for r in range(1, min(self.n_target_classes + 1, ranked.shape[1]))
            ]
        for tg in columns:
            for restart in range(self.restarts):
                radius = None
                if restart > 0:
                    radius = torch.where(best_norm.isfinite(), best_norm, 0.0)
                adv, dist = self.fab_run(model, x, own, tg, gen, radius, None, targeted)
                better = dist < best_norm
                best[better] = adv[better]
                best_norm = torch.where(better, dist, best_norm)
        return shrink_along_ray(model, x, best, labels, targeted)
