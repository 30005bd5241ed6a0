"""Decoupled Direction and Norm attack (Rony et al. 2019), l2 minimal perturbation."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparserobust.attacks.base import (
    MinimizationAttack,
    ce_loss,
    clearly_adversarial,
    loss_and_grad,
    shrink_along_ray,
)
from sparserobust.attacks.norms import expand_like
from sparserobust.attacks.result import is_adversarial
from sparserobust.errors import AttackError


class DDN(MinimizationAttack):
    """DDN l2: gradient steps on the cross-entropy decoupled from a norm budget.

    Each of ``steps`` iterations takes a normalised-gradient step of size
    cosine-annealed from 1 to 0.01, then rescales the perturbation to the
    current budget eps, which shrinks by ``(1 - gamma)`` when the iterate is
    adversarial and grows by ``(1 + gamma)`` otherwise (start ``init_epsilon``,
    capped at the largest l2 distance inside the box), and clips to [0,1].
    The smallest adversarial iterate (l2 distance in [0,1] pixel space) per
    sample is returned. Only input gradients are computed. With
    ``abort_early`` a sample leaves the working batch once, in the second half
    of the schedule, its best norm has improved by less than 0.01% over
    ``ceil(steps / 10)`` steps (like C&W's early abort). The result is then
    shrunk along its ray towards x by a bisection of ``refine_steps`` forward
    passes (0: off). ``abort_early=False, refine_steps=0``
    is the original DDN (and foolbox's).
    """

    name = "ddn"
    norm = 2.0

    def __init__(
        self,
        steps: int = 100,
        init_epsilon: float = 1.0,
        gamma: float = 0.05,
        abort_early: bool = True,
        refine_steps: int = 10,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.steps = int(steps)
        self.abort_early = bool(abort_early)
        self.refine_steps = int(refine_steps)
        self.init_epsilon = float(init_epsilon)
        self.gamma = float(gamma)
        if self.steps < 1 or self.init_epsilon <= 0 or not 0 < self.gamma < 1:
            raise AttackError("DDN needs steps >= 1, init_epsilon > 0 and 0 < gamma < 1")

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
    ) -> torch.Tensor:
        n = x.shape[0]
        dev = x.device
        x_orig, labels_orig = x, labels
        out_delta = torch.zeros_like(x)
        idx = torch.arange(n, device=dev)
        worst = torch.maximum(x, 1 - x).flatten(1).norm(dim=1)
        eps = torch.full((n,), self.init_epsilon, device=dev).minimum(worst)
        delta = torch.zeros_like(x)
        x_adv = x.clone()
        lo, hi = -x, 1.0 - x  # box constraint on delta
        best_l2 = torch.full((n,), math.inf, device=dev)
        best_delta = torch.zeros_like(x)
        grow = torch.tensor(1 + self.gamma, device=dev)
        shrink = torch.tensor(1 - self.gamma, device=dev)
        window = math.ceil(self.steps / 10)
        then_l2 = best_l2.clone()
        for i in range(self.steps):
            stepsize = 0.01 + (1.0 - 0.01) * (1 + math.cos(math.pi * i / self.steps)) / 2
            logits, _, grad = loss_and_grad(model, x_adv, ce_loss(labels, targeted))
            adv = is_adversarial(logits, labels, targeted)
            l2 = delta.flatten(1).norm(dim=1)
            better = clearly_adversarial(logits, labels, targeted) & (l2 < best_l2)
            if bool(better.any()):
                best_l2 = torch.where(better, l2, best_l2)
                best_delta[better] = delta[better]
            if self.abort_early and i % window == 0 and 2 * i >= self.steps:
                # per-sample abort: best norm improved by less than 0.01% in a window
                stalled = torch.isfinite(best_l2) & (best_l2 >= 0.9999 * then_l2)
                then_l2 = best_l2.clone()
                if bool(stalled.any()):
                    out_delta[idx[stalled]] = best_delta[stalled]
                    keep = ~stalled
                    idx, x, labels, worst, eps, delta, lo, hi = (
                        idx[keep], x[keep], labels[keep], worst[keep], eps[keep],
                        delta[keep], lo[keep], hi[keep],
                    )  # fmt: skip
                    best_l2, best_delta, then_l2 = best_l2[keep], best_delta[keep], then_l2[keep]
                    grad, adv = grad[keep], adv[keep]
                    if idx.numel() == 0:
                        break
            gnorm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta.addcmul_(grad, expand_like(stepsize / gnorm, grad))
            eps = torch.minimum(eps * torch.where(adv, shrink, grow), worst)
            dnorm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta.mul_(expand_like(eps / dnorm, delta))
            delta = torch.clamp(delta, lo, hi)
            x_adv = x + delta
        if idx.numel():
            with torch.no_grad():
                adv = clearly_adversarial(model(x_adv), labels, targeted)
            l2 = delta.flatten(1).norm(dim=1)
            better = adv & (l2 < best_l2)
            best_delta[better] = delta[better]
            out_delta[idx] = best_delta
        best = torch.clamp(x_orig + out_delta, 0.0, 1.0)
        if self.refine_steps > 0:
            best = shrink_along_ray(model, x_orig, best, labels_orig, targeted, self.refine_steps)
        return best
