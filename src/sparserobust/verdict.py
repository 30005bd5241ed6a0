"""The report's numbers: intervals over seeds or images, headlines, verdicts, Pareto front.

Reads a results store into a :class:`StudyData` (one :class:`Cell` per metric label,
method and target sparsity) and answers the report's question from it: per norm, the
best sparsity within the clean-accuracy budget and whether it beats the dense model.

Intervals are 95%. With three or more seeds a cell shows the Student-t interval of
the mean over seeds. With fewer, it shows a bootstrap interval over test images
(:data:`BOOTSTRAP` resamples; the mean over seeds of each resample): from the stored
per-sample minimal norms where a minimisation attack stored them, else from the
binomial distribution of an accuracy over its ``n`` images. A metric with neither
(CLEVER, bounds, diagnostics) shows the per-seed values only. Accuracies and their
intervals lie in [0, 1].
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from sparserobust.config import FRONT
from sparserobust.measurements import Record, records_of
from sparserobust.plausible import Implausible, implausible
from sparserobust.store import ResultStore

CLEAN = "clean_accuracy"
BOOTSTRAP = 1000
"""Bootstrap resamples per cell."""
TEST_IMAGES = {"mnist": 10000, "fashion-mnist": 10000, "cifar10": 10000, "digits": 364}
"""Test-set sizes: the binomial ``n`` of a model's clean accuracy."""
NORMS = {"inf": "l_inf", "2": "l2"}

Key = tuple[str, str, float]  # (metric label, method, target sparsity)


@dataclass
class Cell:
    """One metric at one (method, target sparsity): mean over seeds, its 95% interval
    (``low``, ``high``; NaN when none), the number of seeds ``n``, the mean measured
    ``sparsity``, the per-seed ``values`` and the interval's ``kind``: ``"t"``
    (Student-t over seeds), ``"bootstrap"`` (over images) or ``"none"``."""

    mean: float
    low: float
    high: float
    n: int
    sparsity: float
    values: tuple[float, ...] = ()
    kind: str = "t"


@dataclass
class StudyData:
    """Everything the report draws from one run directory."""

    name: str
    config: dict[str, Any]
    table: dict[str, dict[str, dict[float, Cell]]]
    metrics: list[str]
    info: dict[str, Record]
    boots: dict[Key, np.ndarray] = field(default_factory=dict)
    seed_values: dict[Key, dict[int, float]] = field(default_factory=dict)
    distances: dict[tuple[str, str], dict[str, dict[float, list[np.ndarray]]]] = field(
        default_factory=dict
    )
    flags: list[tuple[str, float, str, str, str]] = field(default_factory=list)
    implausible: list[Implausible] = field(default_factory=list)
    """Stored numbers that cannot be right (:mod:`sparserobust.plausible`)."""
    front: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    """The dense-front models' values (``control.dense_front``): label (``CLEAN`` for
    clean accuracy) -> seed -> front id -> value; :mod:`sparserobust.control` reads it."""

    def is_accuracy(self, label: str) -> bool:
        """Whether ``label`` is an accuracy (clipped to [0, 1])."""
        return label == CLEAN or (
            label in self.info and self.info[label].metric == "robust_accuracy"
        )

    def interval_note(self) -> str:
        """One sentence saying which interval the report's brackets show."""
        kinds = [
            c.kind for per in self.table.values() for cells in per.values() for c in cells.values()
        ]
        t_note = "brackets: 95% Student-t interval of the mean over seeds"
        boot = (
            f"95% bootstrap interval over test images ({BOOTSTRAP} resamples, per-sample "
            "minimal norms where stored, else the binomial over n images); dots in the plots "
            "are single seeds; metrics without per-image data show no interval"
        )
        if all(k == "t" for k in kinds):
            return t_note
        if "t" not in kinds:
            return f"brackets (fewer than 3 seeds): {boot}"
        other = sum(k != "t" for k in kinds)
        return (
            f"{t_note}; in the {other} of {len(kinds)} cells where fewer than 3 seeds have a "
            f"value: {boot}"
        )


def interval(values: Sequence[float | None]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t interval (the mean itself for one value)."""
    from scipy import stats

    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@cache
def _indices(n: int) -> np.ndarray:
    """The (BOOTSTRAP, n) image indices of every bootstrap over n images: shared, so
    two models measured on the same images are resampled in pairs."""
    return np.random.default_rng(20240531).integers(0, n, size=(BOOTSTRAP, n))


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, parts)).encode()))


def _binomial(p: float, n: int, *seed: object) -> np.ndarray:
    p = min(max(p, 0.0), 1.0)
    return _rng(*seed).binomial(n, p, BOOTSTRAP) / n


def _replicates(rec: Record, dist: np.ndarray | None, n: int | None, key: str) -> np.ndarray | None:
    """Bootstrap replicates of one stored value, or None when it cannot be resampled."""
    if rec.metric == "robust_accuracy":
        if dist is not None and rec.eps is not None:
            return (dist[_indices(len(dist))] > rec.eps).mean(axis=1)
        if n and math.isfinite(rec.value):
            return _binomial(rec.value, n, key, rec.label)
    if rec.metric == "median_norm" and dist is not None:
        sample = dist[_indices(len(dist))]
        broken = np.where((sample > 0) & np.isfinite(sample), sample, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(broken, axis=1)
    return None


def _distances(numbers: dict[str, Any]) -> np.ndarray | None:
    raw = numbers.get("distances")
    if not raw:
        return None
    return np.array([math.inf if d in ("inf", None) else float(d) for d in raw], dtype=float)


def gather(store: ResultStore, name: str = "", bootstrap: bool = True) -> StudyData:
    """Read every model and result of ``store`` into cells. Dense models (sparsity 0)
    appear under every method, so each curve starts at the dense model.

    ``bootstrap=False`` keeps version 0.1's cells (Student-t over any 2+ seeds, no
    clipping), which ``scripts/reproduction_tables.py`` reads through ``collect``;
    ``store`` then needs only ``models()`` and ``results()``."""
    import json

    get_meta = getattr(store, "get_meta", None)
    config = json.loads((get_meta("config") if get_meta else None) or "{}")
    n_test = TEST_IMAGES.get(str(config.get("dataset")))
    n_eval = (config.get("eval") or {}).get("n")
    entries: dict[Key, dict[int, tuple[float, float, np.ndarray | None]]] = defaultdict(dict)
    info: dict[str, Record] = {}
    data = StudyData(name or str(config.get("name", "?")), config, {}, [], info)
    models = store.models()
    all_results = store.results()
    data.implausible = implausible(models, all_results)
    front = {m.model_key: m for m in models if m.method == FRONT}  # control.py
    for m in front.values():
        data.front.setdefault(CLEAN, {}).setdefault(m.seed, {})[front_name(m.model_key)] = (
            m.accuracy
        )
    models = [m for m in models if m.method != FRONT]
    kept = {m.model_key for m in models}
    methods = sorted({m.method for m in models if m.method != "dense"}) or ["dense"]

    def targets(method: str) -> list[str]:
        return methods if method == "dense" else [method]

    for m in models:
        reps = _binomial(m.accuracy, n_test, m.model_key) if n_test else None
        for meth in targets(m.method):
            entries[(CLEAN, meth, m.target_sparsity)][m.seed] = (m.accuracy, m.sparsity, reps)
    for r in all_results:
        if r["model_key"] in front:
            for rec in records_of(r["numbers"]):
                data.front.setdefault(rec.label, {}).setdefault(r["seed"], {})[
                    front_name(r["model_key"])
                ] = rec.value
            continue
        if r["model_key"] not in kept:
            continue
        numbers = r["numbers"]
        recs = records_of(numbers)
        dist = _distances(numbers)
        n = (numbers.get("summary") or {}).get("n") or n_eval
        for text in numbers.get("flags", []):
            data.flags.append(
                (r["method"], r["target_sparsity"], r["model_key"], r["measurement"], text)
            )
        for rec in recs:
            info.setdefault(rec.label, rec)
            reps = _replicates(rec, dist, n, r["model_key"])
            for meth in targets(r["method"]):
                entries[(rec.label, meth, r["target_sparsity"])][r["seed"]] = (
                    rec.value,
                    r["sparsity"],
                    reps,
                )
        if dist is not None and recs:
            for meth in targets(r["method"]):
                per = data.distances.setdefault((recs[0].source, str(recs[0].norm)), {})
                per.setdefault(meth, {}).setdefault(r["target_sparsity"], []).append(dist)
    for key, seeds in sorted(entries.items()):
        label, method, target = key
        data.table.setdefault(label, {}).setdefault(method, {})[target] = _cell(
            data, key, seeds, clip=bootstrap and data.is_accuracy(label), bootstrap=bootstrap
        )
        data.seed_values[key] = {s: v[0] for s, v in seeds.items()}
    data.metrics = sorted(k for k in data.table if k != CLEAN)
    return data


def front_name(model_key: str) -> str:
    """The front id of a dense-front model's store key (``s0/dense-front/<id>``)."""
    return model_key.split("/", 2)[2]


def _cell(
    data: StudyData,
    key: Key,
    seeds: dict[int, tuple[float, float, np.ndarray | None]],
    clip: bool,
    bootstrap: bool = True,
) -> Cell:
    values = tuple(v[0] for _, v in sorted(seeds.items()))
    finite = [v for v in values if math.isfinite(v)]
    sparsity = sum(v[1] for v in seeds.values()) / len(seeds)
    reps = [v[2] for v in seeds.values()]
    if len(finite) >= 3 or (not bootstrap and finite):
        mean, low, high = interval(finite)
        kind = "t"
    elif finite and all(r is not None for r in reps):
        mean = sum(finite) / len(finite)
        boot = np.mean(np.stack(reps), axis=0)  # type: ignore[arg-type]
        data.boots[key] = boot
        low, high = (float(q) for q in np.nanpercentile(boot, [2.5, 97.5]))
        kind = "bootstrap"
    else:
        mean = sum(finite) / len(finite) if finite else math.nan
        low = high = mean if len(finite) == 1 and len(values) == 1 else math.nan
        kind = "none"
    if clip:
        low, high = min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)
    return Cell(mean, low, high, len(values), sparsity, values, kind)


def difference(
    data: StudyData, label: str, a: tuple[str, float], b: tuple[str, float]
) -> tuple[float, float, float]:
    """``label`` at ``a`` minus ``label`` at ``b``, each a (method, target sparsity):
    (difference of the means, 95% interval low, high). Paired over seeds (Student-t)
    when both cells are over 3+ seeds they share, else the bootstrap of the difference
    (paired over images where both resample the same images); the interval is NaN
    when neither is possible."""
    cells = data.table[label]
    ca, cb = cells[a[0]][a[1]], cells[b[0]][b[1]]
    diff = ca.mean - cb.mean
    sa = data.seed_values.get((label, *a), {})
    sb = data.seed_values.get((label, *b), {})
    common = sorted(set(sa) & set(sb))
    if ca.kind == "t" and cb.kind == "t" and len(common) >= 3:
        _, low, high = interval([sa[s] - sb[s] for s in common])
        return diff, low, high
    ba, bb = data.boots.get((label, *a)), data.boots.get((label, *b))
    if ba is not None and bb is not None:
        low, high = (float(q) for q in np.nanpercentile(ba - bb, [2.5, 97.5]))
        return diff, low, high
    return diff, math.nan, math.nan


def delta(data: StudyData, label: str, method: str, target: float) -> tuple[float, float, float]:
    """Change of ``label`` from the dense model at ``target`` (:func:`difference` of
    ``(method, target)`` and ``(method, 0.0)``)."""
    return difference(data, label, (method, target), (method, 0.0))


# --- which method at each sparsity -------------------------------------------------------


@dataclass
class MethodRanking:
    """The methods at one target sparsity, best first, for one metric label.
    ``lead`` is the best minus the runner-up (:func:`difference`); ``clear`` says
    whether its 95% interval excludes zero in the best method's favour."""

    target: float
    order: list[tuple[str, Cell, Cell | None]]  # (method, value cell, clean-accuracy cell)
    lead: tuple[float, float, float]
    clear: bool


def _higher_is_better(data: StudyData, label: str) -> bool:
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
    higher = _higher_is_better(data, label)
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


# --- headlines --------------------------------------------------------------------------


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
    from sparserobust.errors import ConfigError

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


# --- verdict ----------------------------------------------------------------------------


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


def pct(x: float) -> str:
    """A sparsity as a percentage: 0.5 -> "50%", 0.995 -> "99.5%"."""
    return f"{100 * x:.4g}%"


def num(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3g}" if abs(v) >= 10 else f"{v:.3f}"


def span(low: float, high: float, signed: bool = False) -> str:
    """``[low, high]``, or empty when there is no interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    if signed:
        return f" [{low:+.3f}, {high:+.3f}]"
    return f" [{num(low)}, {num(high)}]"


def verdict_rows(data: StudyData, label: str, max_drop: float) -> list[VerdictRow]:
    """Per method: the best pruned sparsity for ``label`` among models whose mean clean
    accuracy is within ``max_drop`` of the dense model's (ties: the least sparse), its
    change from dense, the verdict (better / no gain / worse, by the change's 95%
    interval) and the least sparsity whose interval lies wholly below dense."""
    higher = _higher_is_better(data, label)
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


# --- trade-off front --------------------------------------------------------------------


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


# --- warnings ---------------------------------------------------------------------------

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


# --- certified <= exact <= attacked -----------------------------------------------------


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
