"""Robustness metrics from an :class:`~sparserobust.attacks.AttackResult`.

Clean accuracy, robust accuracy at a list of epsilons, success rate, the
DeepFool robustness measure ``rho_p`` and the median perturbation norm. Norms
are those of the attack (l2 or l_inf) in [0,1] pixel space. Every function
returns plain Python numbers; :func:`summarize` returns a JSON-able dict
(``None`` stands for an undefined number, e.g. a median over no points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from sparserobust.attacks.base import check_epsilons
from sparserobust.attacks.norms import lp_norms, norm_name
from sparserobust.attacks.result import AttackResult
from sparserobust.errors import AttackError


def _row(result: AttackResult, epsilon: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(success (N,), distances (N,)) of a minimisation result, or of one
    epsilon of a fixed-epsilon result (the largest when ``epsilon`` is None)."""
    if result.epsilons is None:
        return result.success, result.distances
    eps = result.epsilons[-1] if epsilon is None else float(epsilon)
    if eps not in result.epsilons:
        raise AttackError(f"epsilon {eps} was not attacked: choose one of {list(result.epsilons)}")
    i = result.epsilons.index(eps)
    return result.success[i], result.distances[i]


def _attacked(result: AttackResult) -> torch.Tensor:
    """Bool (N,): points the metrics count as attacked (correctly classified ones;
    for a targeted run, every point)."""
    if result.targeted:
        return torch.ones_like(result.clean_correct)
    return result.clean_correct


def _number(v: float) -> float | None:
    return v if math.isfinite(v) else None


def clean_accuracy(result: AttackResult) -> float:
    """Fraction of the N clean inputs the model classifies correctly."""
    return float(result.clean_correct.float().mean())


def robust_accuracy(
    result: AttackResult, epsilons: Sequence[float] | None = None
) -> dict[float, float]:
    """Robust accuracy per epsilon: the fraction of all N points that are
    classified correctly and not broken within distance eps.

    Fixed-epsilon results use their per-epsilon success (``epsilons`` None:
    every attacked epsilon). Minimisation results threshold the per-sample
    minimal distances: a point counts as robust at eps when its distance is
    larger than eps (failures have distance inf); ``epsilons`` is required.
    The curve is non-increasing in eps by construction.
    """
    correct = result.clean_correct
    out: dict[float, float] = {}
    if result.epsilons is not None:
        for eps in result.epsilons if epsilons is None else check_epsilons(epsilons):
            success, _ = _row(result, eps)
            out[eps] = float((correct & ~success).float().mean())
        return out
    if epsilons is None:
        raise AttackError(
            "robust accuracy of a minimisation attack needs epsilons, e.g. [0.5, 1.0]"
        )
    for eps in check_epsilons(epsilons):
        out[eps] = float((correct & (result.distances > eps)).float().mean())
    return out


def success_rate(result: AttackResult, epsilon: float | None = None) -> float:
    """Fraction of attacked points (correctly classified ones; all points when
    targeted) the attack broke; for a fixed-epsilon result at ``epsilon``
    (default: the largest). NaN when no point was attacked."""
    success, _ = _row(result, epsilon)
    mask = _attacked(result)
    if not bool(mask.any()):
        return math.nan
    return float(success[mask].float().mean())


def median_norm(result: AttackResult, epsilon: float | None = None) -> float:
    """Median ``||r||_p`` (the attack's norm, [0,1] pixel space) over attacked
    points the attack broke (mean of the two middle values for an even count);
    NaN when there are none."""
    success, dist = _row(result, epsilon)
    sel = dist[_attacked(result) & success]
    return float(sel.double().quantile(0.5)) if sel.numel() else math.nan


def rho(result: AttackResult, epsilon: float | None = None, p: float | None = None) -> float:
    """DeepFool's robustness measure: mean of ``||r||_p / ||x||_p`` over correctly
    classified, successfully attacked points (``p``: the attack's norm by
    default). NaN when there are none."""
    success, _ = _row(result, epsilon)
    mask = result.clean_correct & success
    if not bool(mask.any()):
        return math.nan
    p = result.norm if p is None else p
    if result.epsilons is None:
        x_adv = result.x_adv
    else:
        x_adv = result.x_adv[
            result.epsilons.index(result.epsilons[-1] if epsilon is None else epsilon)
        ]
    x = result.x[mask]
    r = lp_norms(x_adv[mask].to(x.device) - x, p)
    return float((r / lp_norms(x, p).clamp_min(1e-12)).mean())


def summarize(result: AttackResult, epsilons: Sequence[float] | None = None) -> dict[str, Any]:
    """All metrics of one run as a JSON-able dict.

    Keys: ``attack``, ``norm`` ("l2"/"linf"), ``n``, ``targeted``, ``params``,
    ``seconds``, ``clean_accuracy``, ``success_rate``, ``median_norm``, ``rho``,
    ``robust_accuracy`` (``{eps: accuracy}``; for a minimisation attack only
    when ``epsilons`` is given), and for a fixed-epsilon attack ``epsilons``,
    ``at_epsilon`` (the largest epsilon, to which the top-level success rate,
    median and rho refer) and ``per_epsilon`` (``{eps: {success_rate,
    median_norm, rho}}``).
    """
    out: dict[str, Any] = {
        "attack": result.attack,
        "norm": norm_name(result.norm),
        "n": len(result),
        "targeted": result.targeted,
        "params": dict(result.params),
        "seconds": round(result.seconds, 4),
        "clean_accuracy": clean_accuracy(result),
        "success_rate": _number(success_rate(result)),
        "median_norm": _number(median_norm(result)),
        "rho": _number(rho(result)),
    }
    if result.epsilons is not None:
        out["epsilons"] = list(result.epsilons)
        out["at_epsilon"] = result.epsilons[-1]
        out["robust_accuracy"] = robust_accuracy(result, epsilons)
        out["per_epsilon"] = {
            eps: {
                "success_rate": _number(success_rate(result, eps)),
                "median_norm": _number(median_norm(result, eps)),
                "rho": _number(rho(result, eps)),
            }
            for eps in result.epsilons
        }
    elif epsilons is not None:
        out["robust_accuracy"] = robust_accuracy(result, epsilons)
    else:
        out["robust_accuracy"] = {}
    return out
