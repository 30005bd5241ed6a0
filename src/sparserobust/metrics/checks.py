"""Evaluation sanity checks, in the spirit of AutoAttack's ``checks.py``.

A robustness number is only worth reporting when the attack could work. These
checks look for the usual ways it cannot, and return human-readable flags that
are stored with every model's results and shown in the report:

- zero or vanishing input gradients on a large share of points (gradient
  masking: dead ReLUs in over-pruned networks, saturated softmax);
- a minimal-norm attack that fails on points where success is always possible
  (every image can be moved to any other in the [0,1] box);
- robust accuracy that increases with epsilon;
- a reported success that a fresh forward pass does not confirm;
- adversarials a gradient-free attack (Square) finds where gradient attacks failed
  (gradient masking).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.attacks.result import AttackResult
from sparserobust.utils import eval_mode, model_device

VANISHING_GRADIENT = 1e-10
"""An input gradient with l1 norm at or below this counts as vanishing."""
GRADIENT_SHARE = 0.1
"""Flag when more than this share of the points have vanishing gradients."""


def gradient_check(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500
) -> dict[str, Any]:
    """Share of points whose cross-entropy input gradient has l1 norm <= 1e-10.

    Returns ``{"vanishing_share": float, "flags": [...]}``; the model is in eval
    mode during the check and its mode is restored.
    """
    device = model_device(model)
    vanishing = 0
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device).clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[i : i + batch_size].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            vanishing += int((grad.flatten(1).abs().sum(1) <= VANISHING_GRADIENT).sum())
    share = vanishing / max(1, x.shape[0])
    flags = []
    if share > GRADIENT_SHARE:
        flags.append(
            f"vanishing input gradients on {share:.0%} of points: gradient attacks may "
            "under-report success (gradient masking); confirm with a gradient-free attack"
        )
    return {"vanishing_share": share, "flags": flags}


def monotonicity_flags(robust_accuracy: Mapping[Any, float | None], what: str) -> list[str]:
    """Flags where robust accuracy rises from a smaller to a larger epsilon."""
    points = sorted((float(e), a) for e, a in robust_accuracy.items() if a is not None)
    flags = []
    for (e0, a0), (e1, a1) in zip(points, points[1:], strict=False):
        if a1 > a0 + 1e-12:
            flags.append(
                f"{what}: robust accuracy rises from {a0:.4f} at eps {e0:g} to {a1:.4f} at "
                f"eps {e1:g}: the attack is not converging; raise steps or restarts"
            )
    return flags


@torch.no_grad()
def result_flags(model: nn.Module, result: AttackResult, batch_size: int = 500) -> list[str]:
    """Flags about one attack result: unconfirmed successes, incomplete minimal-norm
    attacks, non-monotone robust accuracy."""
    flags: list[str] = []
    what = f"{result.attack} l{'inf' if result.norm == float('inf') else '2'}"
    device = model_device(model)
    x_adv = result.x_adv if result.epsilons is not None else result.x_adv.unsqueeze(0)
    success = result.success if result.epsilons is not None else result.success.unsqueeze(0)
    unconfirmed = 0
    with eval_mode(model):
        for row_x, row_s in zip(x_adv, success, strict=True):
            for i in range(0, row_x.shape[0], batch_size):
                logits = model(row_x[i : i + batch_size].to(device))
                pred = logits.argmax(1).cpu()
                wanted = result.target if result.target is not None else result.y
                labels = wanted[i : i + batch_size]
                hit = pred == labels.cpu() if result.targeted else pred != labels.cpu()
                unconfirmed += int((row_s[i : i + batch_size].cpu() & ~hit).sum())
    if unconfirmed:
        flags.append(f"{what}: {unconfirmed} reported successes not confirmed by re-prediction")
    if result.epsilons is None:
        attacked = result.clean_correct.cpu()
        failed = int((attacked & ~result.success.cpu()).sum())
        if failed:
            flags.append(
                f"{what}: failed on {failed} of {int(attacked.sum())} correctly classified "
                "points, where a large enough perturbation always succeeds; raise its budget"
            )
    return flags


def _eps_key(eps: float, epsilons: tuple[float, ...]) -> int | None:
    """Index of the largest attacked epsilon <= ``eps`` (relative slack 1e-6), or None."""
    below = [i for i, e in enumerate(epsilons) if e <= eps * (1 + 1e-6)]
    return below[-1] if below else None


def gradient_free_flags(
    gradient_free: AttackResult, gradient: list[AttackResult], tolerance: float = 0.01
) -> dict[str, Any]:
    """Compare a gradient-free fixed-epsilon attack (Square) with gradient attacks
    on the same points, to detect gradient masking.

    The gradient-free result may cover only the first ``n`` points of the
    gradient results; the comparison uses those ``n`` points. Gradient results
    in another norm, or with other targets, are ignored. For each epsilon of the
    gradient-free result, a point is *missed by gradient attacks* when the
    gradient-free attack broke it at that epsilon and no gradient attack broke it
    within that epsilon: a fixed-epsilon gradient result counts its success at
    the largest of its epsilons <= eps (the same eps when it was attacked), a
    minimisation result a success at distance <= eps * (1 + 1e-6).

    Returns ``{"eps": [...], "n": int, "compared_with": [attack names],
    "gradient_free_robust_accuracy": {eps: acc}, "gradient_robust_accuracy":
    {eps: acc or None}, "combined_robust_accuracy": {eps: acc or None},
    "missed_share": {eps: share or None}, "flags": [...]}``,
    with one flag when ``missed_share`` exceeds ``tolerance`` at any epsilon.
    Robust accuracy counts points classified correctly and not broken (for the
    gradient attacks: broken by none of them; combined: broken by no attack at all,
    the number to report). When no gradient result shares the
    norm, the gradient numbers are None, ``"note"`` says why, and nothing is flagged.
    """
    gf = gradient_free
    if gf.epsilons is None:
        raise ValueError(
            f"{gf.attack} is a minimisation result: gradient_free_flags needs a "
            "fixed-epsilon gradient-free result (e.g. square)"
        )
    n = len(gf)
    what = f"{gf.attack} l{'inf' if gf.norm == float('inf') else '2'}"
    eps_list = [float(e) for e in gf.epsilons]
    correct = gf.clean_correct.cpu()
    gf_success = gf.success.cpu()
    out: dict[str, Any] = {
        "eps": eps_list,
        "n": n,
        "compared_with": [],
        "gradient_free_robust_accuracy": {
            e: float((correct & ~gf_success[i]).float().mean()) for i, e in enumerate(eps_list)
        },
        "gradient_robust_accuracy": dict.fromkeys(eps_list),
        "combined_robust_accuracy": dict.fromkeys(eps_list),
        "missed_share": dict.fromkeys(eps_list),
        "flags": [],
    }
    same_norm = []
    for g in gradient:
        if g.norm != gf.norm or g.targeted != gf.targeted:
            continue
        if len(g) < n or not torch.equal(g.x[:n].cpu(), gf.x.cpu()):
            raise ValueError(
                f"{g.attack} was not run on the same points as {gf.attack}: the "
                f"gradient-free points must be the first {n} of every gradient result"
            )
        if gf.target is not None and (
            g.target is None or not torch.equal(g.target[:n].cpu(), gf.target.cpu())
        ):
            continue
        same_norm.append(g)
    if not same_norm:
        out["note"] = f"no gradient attack in the {what.split()[1]} norm to compare {what} with"
        return out
    out["compared_with"] = [g.attack for g in same_norm]
    missed_at = []
    for i, eps in enumerate(eps_list):
        broken = torch.zeros(n, dtype=torch.bool)
        for g in same_norm:
            if g.epsilons is None:
                broken |= g.success[:n].cpu() & (g.distances[:n].cpu() <= eps * (1 + 1e-6))
            else:
                j = _eps_key(eps, g.epsilons)
                if j is not None:
                    broken |= g.success[j, :n].cpu()
        share = float((gf_success[i] & ~broken).float().mean())
        out["gradient_robust_accuracy"][eps] = float((correct & ~broken).float().mean())
        out["combined_robust_accuracy"][eps] = float(
            (correct & ~broken & ~gf_success[i]).float().mean()
        )
        out["missed_share"][eps] = share
        if share > tolerance:
            missed_at.append(f"{share:.0%} of points at eps {eps:.4g}")
    if missed_at:
        out["flags"].append(
            f"{what} finds adversarials where gradient attacks "
            f"({', '.join(out['compared_with'])}) failed on {', '.join(missed_at)}: "
            "gradient masking suspected; report the combined robust accuracy (broken by no attack)"
        )
    return out
