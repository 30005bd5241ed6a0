"""Carlini-Wagner l2 attack (Carlini & Wagner 2017) with per-sample search and early abort."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.attacks.base import SAFETY_MARGIN, MinimizationAttack
from sparserobust.errors import AttackError


def margin_loss(
    logits: torch.Tensor, labels: torch.Tensor, onehot: torch.Tensor, targeted: bool
) -> torch.Tensor:
    """Per-sample C&W margin ``(B,)``: ``f_label - max_{j != label} f_j`` (untargeted)
    or ``max_{j != target} f_j - f_target`` (targeted); negative means adversarial."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(onehot, -torch.inf).amax(1)
    return other - own if targeted else own - other


class CarliniWagnerL2(MinimizationAttack):
    """C&W l2: minimise ``||x' - x||_2^2 + c * max(margin + confidence, 0)``
    over ``x' = (tanh(w) + 1) / 2`` (the tanh box keeps x' in [0,1]) with Adam.

    Per sample: ``binary_search_steps`` searches over the constant c (start
    ``initial_const``, times 10 until an adversarial is found, then bisection;
    the last search uses the upper bound, as in foolbox), each of up to
    ``steps`` Adam steps of size ``stepsize``. With ``abort_early`` a sample
    stops a search when its loss has not dropped by 0.01% over the last
    ``ceil(steps / 10)`` steps (tested every tenth of that window, per sample);
    stopped samples leave the working batch, so a step costs only the samples
    still optimising. With ``warm_start`` each search starts from where the
    sample's previous search ended instead of from x (same budget, much earlier
    convergence; ``warm_start=False`` reproduces foolbox's C&W). The smallest adversarial
    (l2 distance to the clean input in [0,1] pixel space) over all searches
    is returned per sample.
    """

    name = "cw"
    norm = 2.0

    def __init__(
        self,
        binary_search_steps: int = 9,
        steps: int = 1000,
        stepsize: float = 0.01,
        confidence: float = 0.0,
        initial_const: float = 1e-3,
        abort_early: bool = True,
        warm_start: bool = True,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.binary_search_steps = int(binary_search_steps)
        self.steps = int(steps)
        self.stepsize = float(stepsize)
        self.confidence = float(confidence)
        self.initial_const = float(initial_const)
        self.abort_early = bool(abort_early)
        self.warm_start = bool(warm_start)
        if self.binary_search_steps < 1 or self.steps < 1:
            raise AttackError("C&W needs binary_search_steps >= 1 and steps >= 1")
        if self.stepsize <= 0 or self.initial_const <= 0 or self.confidence < 0:
            raise AttackError("C&W needs stepsize > 0, initial_const > 0 and confidence >= 0")

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
        w0 = torch.atanh((2 * x - 1) * 0.999999)
        x_rec = (torch.tanh(w0) + 1) / 2
        with torch.no_grad():
            k = model(x[:1]).shape[1]
        onehot = F.one_hot(labels, k).bool()
        consts = torch.full((n,), self.initial_const, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), math.inf, device=dev)
        best_adv = x.clone()
        best_d2 = torch.full((n,), math.inf, device=dev)
        check_every = math.ceil(self.steps / 10)
        start_w = w0.clone()  # where each sample's next search starts (tanh space)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        half = torch.tensor(0.5, device=dev)
        one = torch.tensor(1.0, device=dev)
        # abort test: every `sub` steps, compare each sample's loss with its loss
        # `check_every` steps earlier (a sliding version of the usual check)
        sub = max(1, check_every // 10)
        slots = math.ceil(check_every / sub)
        for search in range(self.binary_search_steps):
            if search == self.binary_search_steps - 1 and self.binary_search_steps >= 10:
                consts = torch.minimum(upper, torch.full_like(upper, 1e10))
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            idx = torch.arange(n, device=dev)
            a_rec, a_x, a_lab, a_oh, a_c = x_rec, x, labels, onehot, consts
            w = start_w.clone() if self.warm_start else w0.clone()
            m = torch.zeros_like(x)
            v = torch.zeros_like(x)
            hist = torch.full((slots, n), math.inf, device=dev)
            for step in range(self.steps):
                t = torch.tanh(w)
                xa = torch.add(half, t, alpha=0.5).requires_grad_(True)
                with torch.enable_grad():
                    logits = model(xa)
                    margin = margin_loss(logits, a_lab, a_oh, targeted)
                    hinge = a_c * (margin + self.confidence).clamp_min(0)
                    (grad,) = torch.autograd.grad(hinge.sum(), xa)
                xa, margin = xa.detach(), margin.detach()
                diff = xa - a_rec
                loss = hinge.detach() + diff.flatten(1).pow(2).sum(1)
                # 2 * d loss / d w through x' = (tanh(w) + 1) / 2, by hand; the factor 2
                # is absorbed by Adam (eps doubled below), which is scale invariant
                grad.add_(diff, alpha=2.0).mul_(torch.addcmul(one, t, t, value=-1.0))
                # Adam step (bias-corrected; the step count is shared by all samples)
                k = step + 1
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                root_bc2 = math.sqrt(1 - b2**k)
                denom = v.sqrt().add_(2 * adam_eps * root_bc2)
                w.addcdiv_(m, denom, value=-self.stepsize * root_bc2 / (1 - b1**k))
                stalled = None
                if self.abort_early and step % sub == 0:
                    slot = (step // sub) % slots
                    stalled = ~(loss <= 0.9999 * hist[slot])
                    hist[slot] = loss
                adv = margin + self.confidence < -SAFETY_MARGIN
                if stalled is not None:
                    adv = adv & ~stalled  # like foolbox: the aborting step is not recorded
                if bool(adv.any()):
                    d2 = (xa - a_x).flatten(1).pow(2).sum(1)
                    found[idx[adv]] = True
                    better = adv & (d2 < best_d2[idx])
                    if bool(better.any()):
                        bi = idx[better]
                        best_d2[bi] = d2[better]
                        best_adv[bi] = xa[better]
                if stalled is not None and bool(stalled.any()):
                    if self.warm_start:
                        start_w[idx[stalled]] = w[stalled]
                    keep = ~stalled
                    idx, a_rec, a_x, a_lab, a_oh, a_c = (
                        idx[keep],
                        a_rec[keep],
                        a_x[keep],
                        a_lab[keep],
                        a_oh[keep],
                        a_c[keep],
                    )
                    w, m, v, hist = w[keep], m[keep], v[keep], hist[:, keep]
                    if idx.numel() == 0:
                        break
            if self.warm_start and idx.numel():
                start_w[idx] = w
            upper = torch.where(found, consts, upper)
            lower = torch.where(found, lower, consts)
            consts = torch.where(torch.isinf(upper), consts * 10, (lower + upper) / 2)
        return best_adv
