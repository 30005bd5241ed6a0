"""Stored numbers that cannot be right: what a damaged or hand-edited database shows.

The report runs :func:`implausible` on every run it reads and marks each verdict that
depends on a flagged number. Checked, per model and per stored result:

- fractions (accuracies, shares) lie in [0, 1]; norms, radii and CLEVER scores are >= 0;
- a model's sparsity agrees with its weight counts;
- an attack's robust accuracy is at most the clean accuracy on the same points, and
  falls (weakly) as epsilon grows;
- the verifier's numbers: certified (CROWN) <= exact lower <= exact upper robust accuracy,
  timeouts are a count in [0, n], and the resolved share is ``1 - timeouts / n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sparserobust.measurements import Record, records_of

CLEAN = "clean_accuracy"

FRACTIONS = frozenset(
    {
        "robust_accuracy",
        "active_relu_fraction",
        "vanishing_share",
        "certified_accuracy_ibp",
        "certified_accuracy_crown",
        "exact_robust_accuracy",
        "exact_robust_accuracy_upper",
        "resolved_share",
    }
)
"""Record metrics that are fractions in [0, 1]."""

NON_NEGATIVE = frozenset({"median_norm", "rho", "clever_mean", "clever_median", "timeouts"})
"""Record metrics that are norms, radii or counts: never negative."""

TOLERANCE = 1e-9


@dataclass(frozen=True)
class Implausible:
    """One number that cannot be right: the model, the measurement (``models`` for the
    model row), the record ``label`` it concerns (``clean_accuracy`` for the model's
    own accuracy) and what is wrong, in words."""

    model_key: str
    method: str
    target: float
    measurement: str
    label: str
    what: str


def _model_checks(m: Any) -> list[Implausible]:
    """A model row's clean accuracy and sparsity (fields a reader lacks are skipped)."""
    out = []
    where = (m.model_key, m.method, m.target_sparsity, "models")
    accuracy = getattr(m, "accuracy", None)
    if accuracy is not None and not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        out.append(Implausible(*where, CLEAN, f"clean accuracy {accuracy} is outside [0,1]"))
    total, pruned = getattr(m, "total_weights", None), getattr(m, "pruned_weights", None)
    if (total is not None and pruned is not None) and (
        total <= 0 or abs(m.sparsity - pruned / total) > 1e-6
    ):
        out.append(
            Implausible(*where, CLEAN, f"sparsity {m.sparsity} disagrees with its weight counts")
        )
    return out


def _record_checks(recs: list[Record]) -> list[tuple[str, str]]:
    out = []
    for rec in recs:
        v = rec.value
        if math.isnan(v):
            continue
        if rec.metric in FRACTIONS and not 0.0 <= v <= 1.0:
            out.append((rec.label, f"{rec.label} = {v} not in [0,1]"))
        if rec.metric in NON_NEGATIVE and v < 0:
            out.append((rec.label, f"{rec.label} = {v} is negative"))
    return out


def _attack_checks(numbers: dict[str, Any], recs: list[Record]) -> list[tuple[str, str]]:
    """Robust accuracy <= clean accuracy on the same points (a misclassified point
    counts as broken at every radius)."""
    out: list[tuple[str, str]] = []
    clean = (numbers.get("summary") or {}).get("clean_accuracy")
    if not (isinstance(clean, int | float) and math.isfinite(clean)):
        return out
    for r in recs:
        if r.metric == "robust_accuracy" and r.value > clean + TOLERANCE:
            out.append(
                (
                    r.label,
                    f"{r.label} = {r.value:.4g} exceeds the clean accuracy {clean:.4g} "
                    "on the same points",
                )
            )
    return out


def _verify_checks(numbers: dict[str, Any], recs: list[Record]) -> list[tuple[str, str]]:
    """Certified (CROWN, when on the same points) <= exact lower <= exact upper; the
    timeouts a count in [0, n]; the resolved share at most ``1 - timeouts / n``."""
    out = []
    by_eps: dict[float, dict[str, Record]] = {}
    for r in recs:
        if r.eps is not None:
            by_eps.setdefault(r.eps, {})[r.metric] = r
    detail = numbers.get("detail") or {}
    same_points = detail.get("n_points") == detail.get("n_exact")
    ns = {}
    for e in detail.get("epsilons") or []:
        if isinstance(e, dict) and isinstance(e.get("exact"), dict):
            ns[float(e.get("epsilon", math.nan))] = e["exact"].get("n")
    for eps, got in sorted(by_eps.items()):
        keys = ["exact_robust_accuracy", "exact_robust_accuracy_upper"]
        if same_points:
            keys.insert(0, "certified_accuracy_crown")
        chain = [got[k] for k in keys if k in got and math.isfinite(got[k].value)]
        for a, b in zip(chain, chain[1:], strict=False):
            if a.value > b.value + TOLERANCE:
                out.append(
                    (a.label, f"{a.label} = {a.value:.4g} exceeds {b.label} = {b.value:.4g}")
                )
        n = ns.get(eps)
        timeouts, resolved = got.get("timeouts"), got.get("resolved_share")
        if timeouts is None or not math.isfinite(timeouts.value) or timeouts.value < 0:
            continue
        if timeouts.value != int(timeouts.value):
            out.append((timeouts.label, f"{timeouts.label} = {timeouts.value} is not a count"))
        if isinstance(n, int) and n > 0:
            if timeouts.value > n:
                out.append(
                    (timeouts.label, f"{timeouts.label} = {timeouts.value:g} exceeds n = {n}")
                )
            elif resolved is not None and resolved.value > 1 - timeouts.value / n + 1e-9:
                out.append(
                    (
                        resolved.label,
                        f"{resolved.label} = {resolved.value:.4g} exceeds what "
                        f"{timeouts.value:g} timeouts of {n} points leave",
                    )
                )
    return out


def implausible(models: list[Any], results: list[dict[str, Any]]) -> list[Implausible]:
    """Every number of a run (``store.models()``, ``store.results()``) that cannot be
    right, in store order."""
    out = [x for m in models for x in _model_checks(m)]
    for r in results:
        recs = records_of(r["numbers"])
        found = _record_checks(recs) + _attack_checks(r["numbers"], recs)
        measurement = str(r.get("measurement", ""))
        if measurement.split(":")[0] == "verify":
            found += _verify_checks(r["numbers"], recs)
        out += [
            Implausible(r["model_key"], r["method"], r["target_sparsity"], measurement, label, what)
            for label, what in found
        ]
    return out


__all__ = ["FRACTIONS", "NON_NEGATIVE", "Implausible", "implausible"]
