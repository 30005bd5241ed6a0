"""Which unstable ReLU a branch-and-bound subdomain splits next: the BaBSR score.

BaBSR (Bunel et al., "Branch and bound for piecewise linear neural network
verification", JMLR 2020) estimates how much splitting neuron ``j`` raises the bound
from the backward coefficient ``lambda_j`` that reaches the ReLU's output in the
domain's own bound pass: an unstable neuron with a negative coefficient pays the
intercept of its upper relaxation, ``-lambda_j * (-u_j l_j / (u_j - l_j))`` logits,
which a split removes. Neurons whose coefficient is not negative get a small score from
the width of their relaxation times ``|lambda_j|`` (the backup score), so every unstable
neuron can be chosen and the search stays complete.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["babsr_candidates", "babsr_choice", "babsr_scores"]

_BACKUP = 1e-3  # weight of the backup (width) score relative to the intercept score


def babsr_scores(lo: torch.Tensor, hi: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """BaBSR score per neuron ``(B, n)`` for pre-activation bounds ``lo``/``hi``
    ``(B, *shape)`` and the coefficient ``coef`` ``(B, *shape)`` on the ReLU's output;
    ``-1`` for neurons that are not unstable (never chosen)."""
    lo, hi, coef = lo.flatten(1), hi.flatten(1), coef.flatten(1)
    unstable = (lo < 0) & (hi > 0)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    gap = torch.where(unstable, -hi * lo / width, torch.zeros_like(hi))  # upper intercept
    score = coef.clamp_max(0).neg() * gap + _BACKUP * coef.abs() * gap
    score = score + 1e-9 * torch.minimum(hi, -lo).clamp_min(0)  # ties: the more balanced split
    return torch.where(unstable, score, torch.full_like(score, -1.0))


def babsr_choice(
    relus: Sequence[int],
    bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    coefs: dict[int, torch.Tensor],
    n: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The neuron each of ``n`` domains splits: ``(layer, flat index)`` as two ``(n,)``
    long tensors over ReLU layers ``relus``; layer ``-1`` where no ReLU is unstable (a
    leaf; every domain of a network without ReLUs). ``bounds[i]``: layer ``i``'s input
    bounds ``(n, *shape)``; ``coefs[i]``: the coefficient on its output ``(n, *shape)``;
    ``device``: where the leaf answer lives when there are no ReLUs."""
    if not relus:
        leaf = torch.full((n,), -1, dtype=torch.long, device=device)
        return leaf, torch.zeros(n, dtype=torch.long, device=device)
    first = babsr_scores(*bounds[relus[0]], coefs[relus[0]])
    best_s, best_j = first.max(1)
    best_l = torch.full_like(best_j, relus[0])
    for i in relus[1:]:
        val, idx = babsr_scores(*bounds[i], coefs[i]).max(1)
        take = val > best_s
        best_s = torch.where(take, val, best_s)
        best_j = torch.where(take, idx, best_j)
        best_l = torch.where(take, torch.full_like(idx, i), best_l)
    best_l = torch.where(best_s < 0, torch.full_like(best_l, -1), best_l)
    return best_l, best_j


def babsr_candidates(
    relus: Sequence[int],
    bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    coefs: dict[int, torch.Tensor],
    k: int,
    n: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` unstable neurons with the best BaBSR scores per domain, over all ReLU
    layers (FSB's filter): ``(layer, flat index)`` as two ``(n, k')`` long tensors,
    ``k' = min(k, neurons)``, best first; layer ``-1`` where fewer than ``k'`` neurons are
    unstable (all ``-1``, one column, for a network without ReLUs). Arguments as
    :func:`babsr_choice`'s."""
    if not relus:
        return (torch.full((n, 1), -1, dtype=torch.long, device=device),
                torch.zeros(n, 1, dtype=torch.long, device=device))  # fmt: skip
    scores = [babsr_scores(*bounds[i], coefs[i]) for i in relus]
    flat = torch.cat(scores, 1)
    sizes = torch.tensor([sc.shape[1] for sc in scores], device=flat.device)
    starts = torch.cumsum(sizes, 0) - sizes
    top, pos = flat.topk(min(k, flat.shape[1]), dim=1)
    which = torch.searchsorted(starts, pos, right=True) - 1  # (n, k') into relus
    layer = torch.tensor(list(relus), device=flat.device)[which]
    return torch.where(top >= 0, layer, torch.full_like(layer, -1)), pos - starts[which]
