"""Study data and intervals: a results store read into cells (mean over seeds, 95% interval).

Reads a results store into a :class:`StudyData` (one :class:`Cell` per metric label,
method and target sparsity) and the paired differences between cells that every verdict is made of.

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
import warnings
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from sparserobust.config import FRONT
from sparserobust.errors import StoreError
from sparserobust.measurements import Record, records_of
from sparserobust.plausible import Implausible, implausible
from sparserobust.report.reader import RunReader, StoredResults

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
    clean accuracy) -> seed -> front id -> value; :mod:`sparserobust.report.front` reads it."""

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


def gather(store: StoredResults, name: str = "", bootstrap: bool = True) -> StudyData:
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
        data.table.setdefault(label, {}).setdefault(method, {})[target] = seed_cell(
            data, key, seeds, clip=bootstrap and data.is_accuracy(label), bootstrap=bootstrap
        )
        data.seed_values[key] = {s: v[0] for s, v in seeds.items()}
    data.metrics = sorted(k for k in data.table if k != CLEAN)
    return data


def front_name(model_key: str) -> str:
    """The front id of a dense-front model's store key (``s0/dense-front/<id>``)."""
    return model_key.split("/", 2)[2]


def seed_cell(
    data: StudyData,
    key: Key,
    seeds: dict[int, tuple[float, float, np.ndarray | None]],
    clip: bool,
    bootstrap: bool = True,
) -> Cell:
    """The cell of one key from its per-seed ``(value, measured sparsity, bootstrap
    replicates or None)``: Student-t over 3+ seeds (or any seeds without ``bootstrap``),
    else the bootstrap over images, else no interval; accuracies ``clip`` to [0, 1]."""
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


def collect(store: StoredResults) -> tuple[dict[str, dict[str, dict[float, Cell]]], list[str]]:
    """``table[metric][method][target_sparsity] -> Cell`` with clean accuracy included,
    and the sorted list of metric labels (the stored records' labels). Dense models
    (sparsity 0) appear under every method so each curve starts at the dense model.
    Intervals are Student-t over seeds, as in version 0.1 (the report's own cells, with
    bootstrap intervals for few seeds, come from :func:`gather`)."""
    data = gather(store, bootstrap=False)
    return data.table, data.metrics


def metric_info(store: StoredResults) -> dict[str, Record]:
    """One stored record per metric label: what the label measures (norm, epsilon,
    whether it is robustness, its direction)."""
    info: dict[str, Record] = {}
    for r in store.results():
        for rec in records_of(r["numbers"]):
            info.setdefault(rec.label, rec)
    return info


def robustness_metrics(metrics: list[str], info: dict[str, Record]) -> list[str]:
    """The labels among ``metrics`` that measure robustness with higher = better."""
    return [
        m for m in metrics if m in info and info[m].robustness and info[m].higher_is_better is True
    ]


def sweet_spots(
    table: dict[str, dict[str, dict[float, Cell]]], metrics: list[str], max_drop: float
) -> list[dict[str, Any]]:
    """Per method and metric of ``metrics`` (robustness metrics, higher = better): the
    sparsity of best mean robustness within the accuracy budget."""
    out = []
    for metric in metrics:
        for method, cells in sorted(table[metric].items()):
            clean = table[CLEAN].get(method, {})
            dense = clean.get(0.0)
            if dense is None:
                continue
            ok = [
                (cell.mean, target)
                for target, cell in cells.items()
                if target in clean
                and clean[target].mean >= dense.mean - max_drop
                and math.isfinite(cell.mean)
            ]
            if not ok:
                continue
            best_value, best_target = max(ok, key=lambda t: (t[0], -t[1]))  # ties: least sparse
            out.append(
                {
                    "metric": metric,
                    "method": method,
                    "sparsity": best_target,
                    "value": best_value,
                    "dense_value": cells[0.0].mean if 0.0 in cells else math.nan,
                    "clean_accuracy": clean[best_target].mean,
                }
            )
    return out


def load_study(run_dir: str | Path, name: str = "") -> StudyData:
    """Read a run directory's store into :class:`StudyData`;
    StoreError (one line) when it is not a run directory."""
    run = Path(run_dir)
    if not (run / "results.sqlite").is_file():
        raise StoreError(
            f"{run}: not a run directory (no results.sqlite); give a folder "
            "written by `sparserobust run`"
        )
    with RunReader(run) as store:
        return gather(store, name)


__all__ = [
    "BOOTSTRAP",
    "CLEAN",
    "Cell",
    "Key",
    "NORMS",
    "StudyData",
    "TEST_IMAGES",
    "collect",
    "delta",
    "difference",
    "front_name",
    "gather",
    "interval",
    "load_study",
    "metric_info",
    "robustness_metrics",
    "seed_cell",
    "sweet_spots",
]
