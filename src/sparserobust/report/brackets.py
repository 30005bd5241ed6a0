"""Certified <= exact <= attacked: per verified epsilon, each model's bracket, and
sound bounds on its true robust accuracy and on changes between models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sparserobust.report.study import StudyData


@dataclass
class Bracket:
    """One model's (method, target sparsity; means over seeds) bracket at one epsilon:
    certified (IBP, CROWN) <= exact (a range where points timed out) <= attacked (the
    lowest robust accuracy of any attack at that epsilon, and which attack).
    ``broken`` names an inequality the numbers violate (a bound above an attack's
    result is a soundness bug, never a rounding matter), else None."""

    method: str
    sparsity: float
    ibp: float
    crown: float
    exact: float
    exact_upper: float
    attacked: float
    attack: str
    broken: str | None = None


def _label_of(data: StudyData, metric: str, eps: float, norm: str) -> str | None:
    for label, r in data.info.items():
        if r.metric == metric and r.eps == eps and r.norm == norm:
            return label
    return None


def _attack_labels(data: StudyData, eps: float, norm: str) -> list[str]:
    """Every attack's robust-accuracy label at ``eps`` in ``norm``."""
    return [
        label
        for label, r in data.info.items()
        if r.metric == "robust_accuracy" and r.eps == eps and r.norm == norm
    ]


def _mean(data: StudyData, label: str | None, method: str, sparsity: float) -> float:
    if label is None:
        return math.nan
    cell = data.table.get(label, {}).get(method, {}).get(sparsity)
    return cell.mean if cell is not None else math.nan


def brackets(data: StudyData) -> dict[tuple[str, float], list[Bracket]]:
    """``{(norm, eps): [Bracket per model]}`` for every epsilon the ``verify``
    measurement certified, in method and sparsity order."""
    out: dict[tuple[str, float], list[Bracket]] = {}
    check = same_points(data.config)
    keys = sorted(
        {
            (r.norm, r.eps)
            for r in data.info.values()
            if r.metric == "certified_accuracy_crown" and r.eps is not None and r.norm
        }
    )
    for norm, eps in keys:
        crown = _label_of(data, "certified_accuracy_crown", eps, norm)
        ibp = _label_of(data, "certified_accuracy_ibp", eps, norm)
        exact = _label_of(data, "exact_robust_accuracy", eps, norm)
        upper = _label_of(data, "exact_robust_accuracy_upper", eps, norm)
        attacks = _attack_labels(data, eps, norm)
        rows: list[Bracket] = []
        assert crown is not None
        dense_done = False
        for method in data.table[crown]:
            for s in sorted(data.table[crown][method]):
                if s == 0.0:  # the dense model sits at sparsity 0 of every method: once
                    if dense_done:
                        continue
                    dense_done = True
                found = [(_mean(data, a, method, s), a) for a in attacks]
                found = [(v, a) for v, a in found if math.isfinite(v)]
                attacked, attack = min(found) if found else (math.nan, "")
                b = Bracket(
                    "dense" if s == 0.0 else method,
                    s,
                    _mean(data, ibp, method, s),
                    _mean(data, crown, method, s),
                    _mean(data, exact, method, s),
                    _mean(data, upper, method, s),
                    attacked,
                    attack.split(" ")[0],
                )
                b.broken = _violated(b) if check else None
                rows.append(b)
        out[(norm, eps)] = rows
    return out


def _violated(b: Bracket) -> str | None:
    """The first of ``IBP <= exact``, ``CROWN <= exact``, ``exact <= attacked`` (and,
    without an exact value, ``IBP, CROWN <= attacked``) that the numbers break, with a
    tolerance of 10^-6 (stored accuracies are float32 multiples of 1/n); NaN terms
    are skipped. Only meaningful where all
    three were measured on the same points. ``exact upper`` counts timeouts as robust,
    so an attack may legitimately land below it."""
    pairs = [
        ("IBP", b.ibp, "exact", b.exact),
        ("CROWN", b.crown, "exact", b.exact),
        ("exact", b.exact, b.attack, b.attacked),
        ("IBP", b.ibp, b.attack, b.attacked),
        ("CROWN", b.crown, b.attack, b.attacked),
    ]
    for n1, v1, n2, v2 in pairs:
        if math.isfinite(v1) and math.isfinite(v2) and v1 > v2 + 1e-6:
            return f"{n1} {v1:.3f} > {n2} {v2:.3f}"
    return None


def sound_bounds(
    data: StudyData, norm: str, eps: float
) -> dict[tuple[str, float], dict[int, tuple[float, float]]]:
    """``{(method, sparsity): {seed: (lower, upper)}}``: per model, bounds that hold for
    the true robust accuracy on the verified points at ``eps``. ``lower`` is the exact
    (verified) share; ``upper`` the smaller of the exact upper share (timeouts counted
    robust) and every attack's robust accuracy at ``eps``. Only meaningful where the
    attacks ran on the verified points (:func:`same_points`); the dense model sits at
    sparsity 0 of every method. Models without an exact value are left out."""
    exact = _label_of(data, "exact_robust_accuracy", eps, norm)
    upper = _label_of(data, "exact_robust_accuracy_upper", eps, norm)
    attacks = _attack_labels(data, eps, norm)
    out: dict[tuple[str, float], dict[int, tuple[float, float]]] = {}
    if exact is None:
        return out
    for method, cells in data.table.get(exact, {}).items():
        for s in cells:
            per: dict[int, tuple[float, float]] = {}
            for seed, low in data.seed_values.get((exact, method, s), {}).items():
                ups = [
                    data.seed_values.get((label, method, s), {}).get(seed, math.nan)
                    for label in [upper, *attacks]
                    if label is not None
                ]
                ups = [u for u in ups if math.isfinite(u)]
                if math.isfinite(low):
                    per[seed] = (low, min(ups) if ups else 1.0)
            if per:
                out[(method, s)] = per
    return out


def sound_change(
    a: dict[int, tuple[float, float]], b: dict[int, tuple[float, float]]
) -> tuple[float, float, int] | None:
    """Bounds on the mean over shared seeds of (true value of ``a`` - true value of
    ``b``), from per-seed ``(lower, upper)`` bounds: ``(mean(lower_a - upper_b),
    mean(upper_a - lower_b), seeds)``; None without a shared seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    lo = sum(a[s][0] - b[s][1] for s in seeds) / len(seeds)
    hi = sum(a[s][1] - b[s][0] for s in seeds) / len(seeds)
    return lo, hi, len(seeds)


def change_text(change: tuple[float, float, int] | None) -> str:
    """``[low, high]`` of a :func:`sound_change`, with ``up`` / ``down`` where both bounds
    agree (rounded to 10^-6: accuracies are stored in float32); ``-`` for None."""
    if change is None:
        return "-"
    lo, hi = (round(v, 6) + 0.0 for v in change[:2])
    word = " up" if lo > 0 else " down" if hi < 0 else ""
    return f"[{lo:+.3f}, {hi:+.3f}]{word}"


def same_points(config: dict[str, Any]) -> bool:
    """Whether the study's verify measurement certifies and decides exactly the same
    points its attacks run on (``verify.n`` and ``n_exact`` equal to ``eval.n``)."""
    from sparserobust.config import EvalSettings
    from sparserobust.measurements.verify import VerifySettings

    ev = config.get("eval") or {}
    n = int(ev.get("n", EvalSettings.n))
    v = (ev.get("measurements") or {}).get("verify") or {}
    return int(v.get("n") or n) == n and int(v.get("n_exact", VerifySettings.n_exact)) == n


__all__ = ["Bracket", "brackets", "change_text", "same_points", "sound_bounds", "sound_change"]
