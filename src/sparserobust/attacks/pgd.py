"""Projected Gradient Descent (Madry et al. 2018), l_inf and l2, random start and restarts."""

from __future__ import annotations

import torch
from torch import nn

from sparserobust.attacks.base import FixedEpsilonAttack, ce_loss, loss_and_grad
from sparserobust.attacks.norms import INF, expand_like, lp_norms, parse_norm, project
from sparserobust.attacks.result import is_adversarial
from sparserobust.errors import AttackError


def random_start(x: torch.Tensor, p: float, eps: float, gen: torch.Generator) -> torch.Tensor:
    """A point drawn uniformly from the l_p ball (p = inf or 2) of radius ``eps``
    around each sample of ``x``, clipped to [0,1]."""
    if p == INF:
        r = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return (x + eps * r).clamp(0.0, 1.0)
    d = x[0].numel()
    g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    u = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype)
    radius = eps * u.pow(1.0 / d)
    g = g * expand_like(radius / lp_norms(g, 2).clamp_min(1e-12), g)
    return (x + g).clamp(0.0, 1.0)


class PGD(FixedEpsilonAttack):
    """PGD on the cross-entropy loss in an l_inf or l2 ball of radius eps ([0,1] pixel units).

    ``steps`` iterations of size ``rel_stepsize * eps`` (l_inf: sign step,
    l2: normalised-gradient step), each followed by projection onto the ball
    and the [0,1] box. ``random_start`` starts from a uniform point of the
    ball; ``restarts`` re-runs the attack (with a fresh random start) on the
    samples still not broken. A sample leaves the working batch as soon as an
    iterate is adversarial. Defaults: 40 (l_inf) or 50 (l2) steps of size
    ``2.5 * eps / steps`` (Madry et al.'s rule: the path can cross the ball
    from a random start to the far side).
    """

    name = "pgd"

    def __init__(
        self,
        norm: float | str = INF,
        steps: int | None = None,
        rel_stepsize: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.norm = parse_norm(norm)
        linf = self.norm == INF
        self.steps = int(steps if steps is not None else (40 if linf else 50))
        self.rel_stepsize = float(rel_stepsize if rel_stepsize is not None else 2.5 / self.steps)
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        if self.steps < 1 or self.restarts < 1 or self.rel_stepsize <= 0:
            raise AttackError("PGD needs steps >= 1, restarts >= 1 and rel_stepsize > 0")

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
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            adv, ok = self._one_run(model, x[todo], labels[todo], targeted, gen, epsilon)
            out[todo] = adv
            todo = todo[~ok]
        return out

    def _one_run(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One PGD run; returns (final or first adversarial iterate, found adversarial)."""
        out = x0.clone()
        found = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
        idx = torch.arange(x0.shape[0], device=x0.device)
        x = random_start(x0, self.norm, eps, gen) if self.random_start else x0.clone()
        xs, labs = x0, labels
        step = self.rel_stepsize * eps
        for _ in range(self.steps):
            logits, _, grad = loss_and_grad(model, x, ce_loss(labs, targeted))
            adv = is_adversarial(logits, labs, targeted)
            if bool(adv.any()):
                out[idx[adv]] = x[adv]
                found[idx[adv]] = True
                keep = ~adv
                idx, x, xs, labs, grad = idx[keep], x[keep], xs[keep], labs[keep], grad[keep]
                if idx.numel() == 0:
                    return out, found
            if self.norm == INF:
                x = x + step * grad.sign()
            else:
                x = x + step * grad / expand_like(lp_norms(grad, 2).clamp_min(1e-12), grad)
            x = project(xs, x, self.norm, eps)
        with torch.no_grad():
            adv = is_adversarial(model(x), labs, targeted)
        out[idx] = x
        found[idx[adv]] = True
        return out, found
