"""The dense control front: is a pruned model more robust than a dense model of the
same clean accuracy?

A pruned model's gain over the dense model mixes two effects: sparsity, and the
accuracy-robustness trade-off (a less accurate model can be more robust without any
sparsity). ``control.dense_front`` in a study config trains dense models to lower
clean accuracy by another route (e.g. stronger weight decay). With the dense model they
draw, per seed, a front: robust accuracy as a piecewise-linear function of clean
accuracy through the front models sorted by clean accuracy.

A pruned model is compared with its own seed's front at its own clean accuracy:
``difference = robust - front(clean)``, averaged over seeds with a 95% Student-t
interval (paired by seed). Its position is ``above`` when the interval lies above 0
(sparsity helps beyond the trade-off), ``below`` when it lies below 0, ``on`` otherwise;
a model compared on one seed gets no position (:data:`ONE_SEED`).
A model more accurate than every front model is compared with the most accurate one
(it must beat that model to dominate it); a model less accurate than every front model
is ``outside`` the front (no extrapolation: add a front model of lower accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sparserobust.report.study import CLEAN, StudyData, interval

DENSE = "dense"
"""The front id of the study's own dense model, which every front includes."""

ABOVE, ON, BELOW, OUTSIDE = "above", "on", "below", "outside"
ONE_SEED = "one seed: no interval"
"""The position of a model compared on one seed only: no interval, so no verdict."""


@dataclass(frozen=True)
class FrontPosition:
    """Where one pruned model kind (``method`` at ``target`` sparsity) lies against the
    dense front for metric ``label``: mean ``clean`` and ``robust`` over seeds, the
    front's mean value at the model's clean accuracy (``front``), ``difference``
    (mean, 95% low, high; NaN interval with fewer than 2 seeds), the number of seeds
    compared and the ``position`` (above / on / below / outside)."""

    method: str
    target: float
    clean: float
    robust: float
    front: float
    difference: tuple[float, float, float]
    seeds: int
    position: str


def has_front(data: StudyData) -> bool:
    """Whether the study measured any dense-front model."""
    return bool(data.front.get(CLEAN))


def front_curve(data: StudyData, label: str, seed: int) -> list[tuple[float, float]]:
    """Seed ``seed``'s front for ``label``: (clean accuracy, value) of its dense model and
    every dense-front model measured on it, sorted by clean accuracy."""
    points: dict[str, tuple[float, float]] = {}
    dense_clean = data.seed_values.get((CLEAN, _any_method(data), 0.0), {}).get(seed)
    dense_value = data.seed_values.get((label, _any_method(data), 0.0), {}).get(seed)
    if dense_clean is not None and dense_value is not None:
        points[DENSE] = (dense_clean, dense_value)
    cleans = data.front.get(CLEAN, {}).get(seed, {})
    for front, value in data.front.get(label, {}).get(seed, {}).items():
        if front in cleans and math.isfinite(value):
            points[front] = (cleans[front], value)
    return sorted(points.values())


def _any_method(data: StudyData) -> str:
    """A method under which the dense model's cells are stored (every method has it)."""
    return next(iter(sorted(data.table.get(CLEAN, {}))), DENSE)


def front_value(curve: Sequence[tuple[float, float]], clean: float) -> float | None:
    """The front's value at clean accuracy ``clean``: linear between the two front
    points around it (points of equal accuracy averaged); the most accurate point's
    value above the front's range; None below it or for an empty front."""
    if not curve or not math.isfinite(clean):
        return None
    merged: dict[float, list[float]] = {}
    for x, y in curve:
        merged.setdefault(x, []).append(y)
    xs = sorted(merged)
    ys = [sum(merged[x]) / len(merged[x]) for x in xs]
    if clean < xs[0]:
        return None
    if clean >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if clean <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y0 + (y1 - y0) * (clean - x0) / (x1 - x0)
    return None  # pragma: no cover - the loop always returns


def front_positions(data: StudyData, label: str) -> list[FrontPosition]:
    """Every pruned model kind of the study against the dense front for ``label``
    (a robust accuracy), in method and sparsity order; empty without a front."""
    if not has_front(data) or label not in data.table:
        return []
    out = []
    for method, cells in sorted(data.table[label].items()):
        for target, cell in sorted(cells.items()):
            if target == 0.0:
                continue
            values = data.seed_values.get((label, method, target), {})
            cleans = data.seed_values.get((CLEAN, method, target), {})
            diffs, fronts, outside = [], [], False
            for seed, value in sorted(values.items()):
                if seed not in cleans or not math.isfinite(value):
                    continue
                ref = front_value(front_curve(data, label, seed), cleans[seed])
                if ref is None:
                    outside = True
                    continue
                diffs.append(value - ref)
                fronts.append(ref)
            clean_cell = data.table[CLEAN].get(method, {}).get(target)
            clean = clean_cell.mean if clean_cell is not None else math.nan
            if outside or not diffs:
                nan = math.nan
                out.append(
                    FrontPosition(
                        method, target, clean, cell.mean, nan, (nan, nan, nan), 0, OUTSIDE
                    )
                )
                continue
            mean, low, high = interval(diffs)
            if len(diffs) < 2:
                low = high = math.nan
                position = ONE_SEED
            else:
                position = ABOVE if low > 0 else BELOW if high < 0 else ON
            out.append(
                FrontPosition(
                    method,
                    target,
                    clean,
                    cell.mean,
                    sum(fronts) / len(fronts),
                    (mean, low, high),
                    len(diffs),
                    position,
                )
            )
    return out


def mean_front(data: StudyData, label: str) -> list[tuple[str, float, float]]:
    """The front for the plot: (front id, mean clean accuracy, mean value) over seeds
    per front model (the dense model as ``dense``), sorted by clean accuracy."""
    per: dict[str, list[tuple[float, float]]] = {}
    method = _any_method(data)
    for seed, value in data.seed_values.get((label, method, 0.0), {}).items():
        clean = data.seed_values.get((CLEAN, method, 0.0), {}).get(seed)
        if clean is not None:
            per.setdefault(DENSE, []).append((clean, value))
    cleans = data.front.get(CLEAN, {})
    for seed, fronts in data.front.get(label, {}).items():
        for front, value in fronts.items():
            if front in cleans.get(seed, {}):
                per.setdefault(front, []).append((cleans[seed][front], value))
    out = [
        (front, sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
        for front, pts in per.items()
    ]
    return sorted(out, key=lambda p: p[1])


__all__ = [
    "ABOVE",
    "BELOW",
    "ON",
    "ONE_SEED",
    "OUTSIDE",
    "FrontPosition",
    "front_curve",
    "front_positions",
    "front_value",
    "has_front",
    "mean_front",
]
