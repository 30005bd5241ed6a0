"""DeepFool (Moosavi-Dezfooli et al. 2016), l2 and l_inf, minimal-perturbation attack."""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparserobust.attacks.base import MinimizationAttack, clearly_adversarial
from sparserobust.attacks.norms import INF, expand_like, parse_norm
from sparserobust.errors import AttackError

log = logging.getLogger(__name__)


def difference_grads(
    model: nn.Module, x: torch.Tensor, source: torch.Tensor, others: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logit differences and their input gradients for a batch.

    ``source`` ``(B,)`` and ``others`` ``(B, C)`` are class indices. Returns
    ``(logits (B, K), diffs (B, C), grads (C, B, ...))`` with
    ``diffs[:, k] = f_{others[:, k]}(x) - f_{source}(x)`` and ``grads[k]`` its
    gradient w.r.t. ``x``; all C gradients come from one batched backward pass.
    """
    x = x.detach().requires_grad_(True)
    c = others.shape[1]
    with torch.enable_grad():
        logits = model(x)
        diffs = logits.gather(1, others) - logits.gather(1, source[:, None])
        eye = torch.eye(c, device=x.device, dtype=diffs.dtype)[:, None, :].expand(c, *diffs.shape)
        try:
            (grads,) = torch.autograd.grad(
                diffs, x, grad_outputs=eye, is_grads_batched=True, retain_graph=True
            )
        except RuntimeError:  # a layer without a batching rule: one backward per class
            grads = torch.stack(
                [
                    torch.autograd.grad(diffs[:, k].sum(), x, retain_graph=k < c - 1)[0]
                    for k in range(c)
                ]
            )
    return logits.detach(), diffs.detach(), grads


class DeepFool(MinimizationAttack):
    """DeepFool in l2 or l_inf: repeatedly step to the nearest linearised class boundary.

    Untargeted: the candidate classes are the ``candidates`` highest-scoring
    classes of the clean input (None: all classes). Targeted: the only
    candidate is the target, measured against the currently top class.
    Each step ``r`` solves the linearised problem exactly (l2:
    ``|f_k - f_c| / ||g||_2^2 * g``; l_inf: ``|f_k - f_c| / ||g||_1 * sign(g)``
    for the nearest candidate k, plus 1e-4 for stability). The overshoot multiplies the accumulated
    perturbation: ``x_adv = clip(x + (1 + overshoot) * sum r)``, as in the
    original and in foolbox. A sample leaves the batch once adversarial.
    """

    name = "deepfool"

    def __init__(
        self,
        norm: float | str = 2,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int | None = 10,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.norm = parse_norm(norm)
        self.steps = int(steps)
        self.overshoot = float(overshoot)
        self.candidates = None if candidates is None else int(candidates)
        if self.steps < 1 or self.overshoot < 0:
            raise AttackError("DeepFool needs steps >= 1 and overshoot >= 0")
        if self.candidates is not None and self.candidates < 2:
            raise AttackError("DeepFool candidates must be >= 2 (or None for all classes)")

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
    ) -> torch.Tensor:
        out = x.clone()
        with torch.no_grad():
            logits0 = model(x)
        k = logits0.shape[1]
        if targeted:
            others = labels[:, None]
        else:
            c = k if self.candidates is None else min(self.candidates, k)
            order = logits0.masked_fill(
                torch.nn.functional.one_hot(labels, k).bool(), -torch.inf
            ).argsort(1, descending=True)
            others = order[:, : c - 1]
        idx = torch.arange(x.shape[0], device=x.device)
        x0, labs, cur = x, labels, x.clone()
        p_total = torch.zeros_like(x)
        for _ in range(self.steps):
            source = labs
            if targeted:
                with torch.no_grad():
                    source = (
                        model(cur)
                        .masked_fill(torch.nn.functional.one_hot(labs, k).bool(), -torch.inf)
                        .argmax(1)
                    )
            logits, diffs, grads = difference_grads(model, cur, source, others)
            adv = clearly_adversarial(logits, labs, targeted)
            if bool(adv.any()):
                out[idx[adv]] = cur[adv]
                keep = ~adv
                idx, x0, labs, cur, p_total, others = (
                    idx[keep],
                    x0[keep],
                    labs[keep],
                    cur[keep],
                    p_total[keep],
                    others[keep],
                )
                diffs, grads = diffs[keep], grads[:, keep]
                if idx.numel() == 0:
                    return out
            flat = grads.flatten(2)  # (C, B, D)
            gnorm = flat.abs().sum(2) if self.norm == INF else flat.norm(dim=2)  # (C, B)
            dist = diffs.abs().T / (gnorm + 1e-8)  # (C, B)
            best = dist.argmin(0)
            b = torch.arange(best.numel(), device=x.device)
            g = grads[best, b]
            d = dist[best, b] + 1e-4  # step slightly past the boundary, as the original
            if self.norm == INF:
                r = expand_like(d, g) * g.sign()
            else:
                r = expand_like(d / (gnorm[best, b] + 1e-8), g) * g
            p_total = p_total + r
            cur = (x0 + (1.0 + self.overshoot) * p_total).clamp(0.0, 1.0)
        out[idx] = cur
        return out
