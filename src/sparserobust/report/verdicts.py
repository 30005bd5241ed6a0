"""Verdicts from study data: headlines, the best sparsity within the accuracy budget
and its change from dense, method rankings per sparsity, the clean-vs-robust Pareto
front, the warnings summary and security curves.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparserobust.errors import ConfigError
from sparserobust.report.study import CLEAN, NORMS, Cell, StudyData, delta, difference
from sparserobust.report.text import num, pct, span


@dataclass
class MethodRanking:
    """The methods at one target sparsity, best first, for one metric label.
    ``lead`` is the best minus the runner-up (:func:`difference`); ``clear`` says
    whether its 95% interval excludes zero in the best method's favour."""

    target: float
    order: list[tuple[str, Cell, Cell | None]]  # (method, value cell, clean-accuracy cell)
    lead: tuple[float, float, float]
    clear: bool


def higher_is_better(data: StudyData, label: str) -> bool:
    """Whether a larger ``label`` means more robust (True unless its record says not)."""
    return data.info[label].higher_is_better is not False if label in data.info else True


def own_grid_methods(config: dict[str, Any]) -> list[str]:
    """Methods with their own grid (``pruning.grids``, e.g. structured's share of units
    removed): their targets are not weight sparsities, so they are never ranked
    against the other methods."""
    return sorted(((config.get("pruning") or {}).get("grids") or {}).keys())


def method_rankings(data: StudyData, label: str) -> list[MethodRanking]:
    """For each pruned target sparsity that two or more weight-sparsity methods share:
    the methods ranked by the mean of ``label`` (direction from its record), with the
    best one's lead over the runner-up and its 95% interval."""
    higher = higher_is_better(data, label)
    sign = 1.0 if higher else -1.0
    own = set(own_grid_methods(data.config))
    per = {m: c for m, c in data.table.get(label, {}).items() if m not in own}
    clean = data.table.get(CLEAN, {})
    targets = sorted({t for cells in per.values() for t in cells if t > 0})
    out = []
    for t in targets:
        here = [(m, cells[t]) for m, cells in per.items() if t in cells]
        here = [(m, c) for m, c in here if math.isfinite(c.mean)]
        if len(here) < 2:
            continue
        here.sort(key=lambda mc: (-sign * mc[1].mean, mc[0]))
        order = [(m, c, clean.get(m, {}).get(t)) for m, c in here]
        lead = difference(data, label, (here[0][0], t), (here[1][0], t))
        gain_low, _ = _gain(lead[1], lead[2], higher)
        out.append(MethodRanking(t, order, lead, math.isfinite(gain_low) and gain_low > 0))
    return out


def ranking_sentence(r: MethodRanking, label: str) -> str:
    """One sentence for a :class:`MethodRanking`."""
    (best, cell, _), (second, other, _) = r.order[0], r.order[1]
    d, low, high = r.lead
    if r.clear:
        verdict = f"{best} keeps the most {label}"
    elif math.isfinite(low):
        verdict = f"{best} and {second} are not distinguishable (the interval includes 0)"
    else:
        verdict = f"{best} is ahead, without an interval"
    return (
        f"at {pct(r.target)}: {verdict}: {num(cell.mean)} vs {num(other.mean)}, "
        f"difference {d:+.3f}{span(low, high, signed=True)}."
    )


def _overall(data: StudyData, label: str) -> float:
    means = [c.mean for cells in data.table[label].values() for c in cells.values()]
    means = [m for m in means if math.isfinite(m)]
    return sum(means) / len(means) if means else math.inf


def default_headline(data: StudyData, norm: str) -> str | None:
    """The default headline label of ``norm`` ("inf" or "2"): for l_inf the strongest
    attack's (lowest mean) robust accuracy at the middle of the stored epsilons; for l2
    the smallest median minimal norm (falling back to robust accuracy like l_inf)."""
    recs = [r for r in data.info.values() if r.norm == norm and r.robustness]
    norms = [r for r in recs if r.metric == "median_norm"]
    if norm == "2" and norms:
        return min(norms, key=lambda r: _overall(data, r.label)).label
    accs = [r for r in recs if r.metric == "robust_accuracy" and r.eps is not None]
    if not accs:
        return min(norms, key=lambda r: _overall(data, r.label)).label if norms else None
    eps = sorted({r.eps for r in accs if r.eps is not None})
    middle = eps[(len(eps) - 1) // 2]
    at = [r for r in accs if r.eps == middle]
    return min(at, key=lambda r: _overall(data, r.label)).label


def headlines(data: StudyData, chosen: dict[str, str | None] | None = None) -> dict[str, str]:
    """``{norm: label}`` of the verdict tables: the configured labels
    (``report.headline_linf``/``headline_l2``), else :func:`default_headline`.
    ConfigError (one line) for a configured label the store does not hold."""
    report = data.config.get("report") or {}
    chosen = chosen or {"inf": report.get("headline_linf"), "2": report.get("headline_l2")}
    out = {}
    for norm in ("inf", "2"):
        label = chosen.get(norm)
        if label is not None and label not in data.info:
            stored = sorted(r.label for r in data.info.values() if r.norm == norm)
            key = "headline_linf" if norm == "inf" else "headline_l2"
            raise ConfigError(
                f"report.{key}: no stored record {label!r}; stored {NORMS[norm]} records: "
                f"{', '.join(stored) or 'none'}"
            )
        label = label or default_headline(data, norm)
        if label is not None:
            out[norm] = label
    return out


def exact_metrics(data: StudyData) -> list[str]:
    """Labels of certified or exact values (metric name starting with ``certified`` or
    ``exact``), for the overview."""
    return [k for k in data.metrics if data.info[k].metric.startswith(("certified", "exact"))]


# the verdict of a method none of whose pruned models has the metric (an incomplete run)
NOT_MEASURED = "no pruned model measured"


@dataclass
class VerdictRow:
    """One method's row of a norm's verdict table."""

    method: str
    label: str
    best: float | None
    cell: Cell | None
    clean: Cell | None
    dense: Cell
    change: tuple[float, float, float]
    verdict: str
    below_from: float | None
    tested_to: float
    sentence: str = ""


def verdict_rows(data: StudyData, label: str, max_drop: float) -> list[VerdictRow]:
    """Per method: the best pruned sparsity for ``label`` among models whose mean clean
    accuracy is within ``max_drop`` of the dense model's (ties: the least sparse), its
    change from dense, the verdict (better / no gain / worse, by the change's 95%
    interval) and the least sparsity whose interval lies wholly below dense."""
    higher = higher_is_better(data, label)
    sign = 1.0 if higher else -1.0
    rows = []
    for method, cells in sorted(data.table.get(label, {}).items()):
        clean = data.table[CLEAN].get(method, {})
        if 0.0 not in cells or 0.0 not in clean:
            continue
        pruned = sorted(t for t in cells if t > 0 and math.isfinite(cells[t].mean))
        ok = [t for t in pruned if t in clean and clean[t].mean >= clean[0.0].mean - max_drop]
        below = None
        for t in pruned:
            _, low, high = delta(data, label, method, t)
            if math.isfinite(low) and _gain(low, high, higher)[1] < 0:
                below = t
                break
        tested = max(pruned, default=0.0)
        if not ok:  # no verdict: nothing measured yet (or all NaN), or none in budget
            rows.append(
                VerdictRow(
                    method,
                    label,
                    None,
                    None,
                    None,
                    cells[0.0],
                    (math.nan,) * 3,  # type: ignore[arg-type]
                    "no pruned model within budget" if pruned else NOT_MEASURED,
                    below,
                    tested,
                )
            )
            continue
        best = max(ok, key=lambda t: (sign * cells[t].mean, -t))
        change = delta(data, label, method, best)
        d, low, high = change
        gain_low, gain_high = _gain(low, high, higher)
        if not math.isfinite(low):
            verdict = "no interval: " + ("better" if sign * d > 0 else "not better") + " than dense"
        elif gain_low > 0:
            verdict = "better than dense"
        elif gain_high < 0:
            verdict = "worse than dense"
        else:
            verdict = "no gain"
        rows.append(
            VerdictRow(
                method,
                label,
                best,
                cells[best],
                clean[best],
                cells[0.0],
                change,
                verdict,
                below,
                tested,
            )
        )
    for row in rows:
        row.sentence = sentence(row, max_drop)
    return rows


def _gain(low: float, high: float, higher: bool) -> tuple[float, float]:
    """A change's interval turned into an improvement's (positive = better)."""
    return (low, high) if higher else (-high, -low)


def below_text(row: VerdictRow) -> str:
    """The "falls below dense" column."""
    if row.verdict == NOT_MEASURED:
        return ""
    if row.below_from is None:
        return f"not up to {pct(row.tested_to)}"
    return f"from {pct(row.below_from)}"


def sentence(row: VerdictRow, max_drop: float) -> str:
    """One plain sentence made from a verdict row's numbers."""
    if row.verdict == NOT_MEASURED:
        return f"{row.method}: no pruned model has a finite {row.label} yet, so no verdict."
    below = (
        f"it falls below dense from {pct(row.below_from)} sparsity"
        if row.below_from is not None
        else f"it does not fall below dense up to {pct(row.tested_to)} sparsity"
    )
    if row.best is None or row.cell is None or row.clean is None:
        return (
            f"{row.method}: no pruned model keeps clean accuracy within {max_drop:.3g} of the "
            f"dense model, so sparsity buys no {row.label} here; {below}."
        )
    d, low, high = row.change
    change = f"{d:+.3f}{span(low, high, signed=True)}"
    return (
        f"{row.method}: the best sparsity within the {max_drop:.3g} accuracy budget is "
        f"{pct(row.best)} (clean accuracy {num(row.clean.mean)}), where {row.label} is "
        f"{num(row.cell.mean)}{span(row.cell.low, row.cell.high)}, {change} against dense "
        f"({num(row.dense.mean)}): {row.verdict}; {below}."
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which of ``points`` (x, y), both higher = better, no other point dominates
    (at least as good in both and better in one). NaN points are never on it."""
    out = []
    for i, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            out.append(False)
            continue
        dominated = any(
            j != i and a >= x and b >= y and (a > x or b > y) for j, (a, b) in enumerate(points)
        )
        out.append(not dominated)
    return out


def tradeoff_metric(data: StudyData, heads: dict[str, str]) -> str | None:
    """The robust accuracy of the trade-off plot: the l_inf headline if it is a robust
    accuracy, else the l2 headline if it is, else none."""
    for norm in ("inf", "2"):
        label = heads.get(norm)
        if label is not None and data.info[label].metric == "robust_accuracy":
            return label
    return None


def tradeoff_points(data: StudyData, label: str) -> list[tuple[str, float, float, float, bool]]:
    """(method, target sparsity, clean mean, robust mean, on the Pareto front) per model
    kind; the dense model once, as method ``dense``."""
    pts: list[tuple[str, float, float, float]] = []
    dense_done = False
    for method, cells in sorted(data.table[label].items()):
        for target, cell in sorted(cells.items()):
            if target == 0.0:
                if dense_done:
                    continue
                dense_done = True
            clean = data.table[CLEAN].get(method, {}).get(target)
            if clean is not None:
                pts.append(("dense" if target == 0 else method, target, clean.mean, cell.mean))
    front = pareto_front([(p[2], p[3]) for p in pts])
    return [(*p, f) for p, f in zip(pts, front, strict=True)]


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def warning_summary(data: StudyData) -> list[str]:
    """One line per (method, warning kind): the sparsity range it occurs in, the
    warning with each number shown as the range it takes, and the model count."""
    groups: dict[tuple[str, str], list[tuple[float, list[str]]]] = defaultdict(list)
    for method, target, _key, _measurement, text in data.flags:
        template = _NUMBER.sub("#", text)
        groups[(method, template)].append((target, _NUMBER.findall(text)))
    lines = []
    for (method, template), items in sorted(groups.items()):
        targets = sorted({t for t, _ in items})
        where = pct(targets[0]) if len(targets) == 1 else f"{pct(targets[0])}–{pct(targets[-1])}"
        parts = template.split("#")
        text = parts[0]
        for i, part in enumerate(parts[1:]):
            vals = sorted({float(nums[i]) for _, nums in items if i < len(nums)})
            shown = f"{vals[0]:g}" if len(vals) == 1 else f"{vals[0]:g}–{vals[-1]:g}"
            text += shown + part
        lines.append(
            f"{method} {where}: {text} ({len(items)} result{'s' if len(items) > 1 else ''})"
        )
    return lines


def security_curve(dists: list[np.ndarray], eps: np.ndarray) -> np.ndarray:
    """Robust accuracy at each of ``eps`` from per-sample minimal norms (0 for points
    misclassified when clean, inf where the attack failed), mean over seeds."""
    return np.mean([(d[None, :] > eps[:, None]).mean(axis=1) for d in dists], axis=0)


__all__ = [
    "MethodRanking",
    "NOT_MEASURED",
    "VerdictRow",
    "below_text",
    "default_headline",
    "exact_metrics",
    "headlines",
    "higher_is_better",
    "method_rankings",
    "own_grid_methods",
    "pareto_front",
    "ranking_sentence",
    "security_curve",
    "sentence",
    "tradeoff_metric",
    "tradeoff_points",
    "verdict_rows",
    "warning_summary",
]
