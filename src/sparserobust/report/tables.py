"""The reproduction tables: markdown tables and plots of a study for the paper.

:func:`write_tables` reads ``RUN_DIR/results.sqlite`` (written by ``sparserobust run``; several run
directories of one config that differ only in their seeds are merged) and writes
into ``OUT_DIR``:

- ``tables.md``: per selected metric, a method x sparsity table of the mean over
  seeds with its 95% Student-t interval; the peak (sparsity of the largest mean)
  per method and metric, with whether its interval clears the dense model's; the
  gradient-masking flags per model; wall time per stage;
- one small PNG per selected metric (mean, 95% band, clean accuracy dotted);
- where the study has the ``verify`` measurement: a table of the MILP's median and
  p95 seconds per point and its timeout rate per sparsity and epsilon, and
  ``verify_solve_time.png`` (both against sparsity); the verify measurement's seconds
  per model; the bracket ``CROWN <= exact <= attacked`` per model; how far each attack
  and CLEVER l_inf are from the exact answer; and sound bounds on each model's true
  robust accuracy and on its change from dense and from the level before.

``seeds`` reads only those seeds' models, e.g. while a study is running.
``scripts/reproduction_tables.py`` is its command line.

Every number in ``docs/reproduction.md`` comes from these files.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sparserobust.errors import StoreError
from sparserobust.measurements import Record
from sparserobust.report.figures import metric_plot
from sparserobust.report.reader import RunReader, StoredResults
from sparserobust.report.study import CLEAN, Cell, gather, interval, metric_info, robustness_metrics
from sparserobust.report.text import fmt, slug, table_cell
from sparserobust.report.verify_tables import (
    bracket_table,
    exact_gap_table,
    solve_time_plot,
    solve_time_table,
    solve_times,
    sound_change_table,
)

DEFAULT_METRICS = [  # those the study has, in this order (a metric listed twice: once)
    "autoattack_linf robust_acc@0.05",
    "autoattack_linf robust_acc@0.1",
    "autoattack_linf robust_acc@0.2",
    "fgsm_linf robust_acc@0.1",
    "pgd_linf robust_acc@0.05",
    "pgd_linf robust_acc@0.1",
    "pgd_linf robust_acc@0.2",
    "square_linf robust_acc@0.1",
    "square_linf+gradient robust_acc@0.1",
    "deepfool_l2 median_norm",
    "deepfool_linf median_norm",
    "cw_l2 median_norm",
    "ddn_l2 median_norm",
    "ddn_l2 robust_acc@1",
    "clever_l2 median",
    "clever_linf median",
    "active_relu_fraction (not robustness)",
    "bound_linf margin median (not robustness)",
    "bound_linf grad norm median (not robustness)",
    "bound_linf ratio median",
    "bound_l2 grad norm median (not robustness)",
    "bound_l2 ratio median",
    "units removed share (not robustness)",
    "compact params (not robustness)",
    "compact FLOPs (not robustness)",
    *(
        f"{m}@{e}{suffix}"
        for e in ("0.02", "0.05", "0.1")
        for m, suffix in (
            ("autoattack_linf robust_acc", ""),
            ("pgd_linf robust_acc", ""),
            ("verify_linf certified_acc ibp", ""),
            ("verify_linf certified_acc crown", ""),
            ("verify_linf exact robust_acc", ""),
            ("verify_linf exact robust_acc upper", " (not robustness)"),
            ("verify_linf resolved share", " (not robustness)"),
            ("verify_linf unstable relus ibp", " (not robustness)"),
            ("verify_linf unstable relus crown", " (not robustness)"),
        )
    ),
]


def add_combined(store: StoredResults, table: dict, info: dict) -> None:
    """Add ``square_l<p>+gradient robust_acc@eps`` (points broken by no attack: the
    gradient attacks' robust accuracy minus the share only Square broke) for runs
    stored before the masking check reported it."""
    raw: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    methods = sorted({m.method for m in store.models() if m.method != "dense"})
    for r in store.results():
        if not r["measurement"].startswith("masking:"):
            continue
        norm = r["measurement"].split(":")[2]
        if r["numbers"].get("not_measured"):  # a diverged model: missing, not zero
            continue
        grad, missed = r["numbers"]["gradient_robust_accuracy"], r["numbers"]["missed_share"]
        for eps, acc in grad.items():
            if acc is None or missed.get(eps) is None:
                continue
            metric = f"square_{norm}+gradient robust_acc@{float(eps):g}"
            for method in methods if r["method"] == "dense" else [r["method"]]:
                raw[metric][method][r["target_sparsity"]].append(acc - missed[eps])
    for metric, per_method in raw.items():
        if metric in table:
            continue
        norm, eps = (
            metric.split("_", 1)[1].split("+")[0].removeprefix("l"),
            float(metric.rsplit("@", 1)[1]),
        )
        info[metric] = Record(metric, math.nan, "robust_accuracy", "square+gradient", norm, eps)
        table[metric] = {
            method: {t: Cell(*interval(v), len(v), t) for t, v in sorted(cells.items())}
            for method, cells in per_method.items()
        }


def metric_table(metric: str, table: dict, targets: list[float]) -> list[str]:
    lines = [f"#### {metric}", ""]
    lines.append("| method | " + " | ".join(f"{t:g}" for t in targets) + " |")
    lines.append("| --- " * (len(targets) + 1) + "|")
    seeds = max(c.n for cells in table[metric].values() for c in cells.values())
    for method, cells in sorted(table[metric].items()):
        row = " | ".join(table_cell(cells.get(t), seeds) for t in targets)
        lines.append(f"| {method} | {row} |")
    return [*lines, ""]


def peaks(metrics: list[str], table: dict, info: dict, max_drop: float = 0.01) -> list[str]:
    """Per method and metric: the peak over the whole grid, and the peak among models
    within ``max_drop`` clean accuracy of the dense model (the usable sweet spot)."""
    lines = [
        "| metric | method | dense | peak sparsity: value | usable peak (clean acc within "
        f"{max_drop:.0%} of dense): sparsity, value | usable peak above dense? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for metric in robustness_metrics(metrics, info):
        for method, cells in sorted(table[metric].items()):
            finite = {t: c for t, c in cells.items() if math.isfinite(c.mean)}
            clean = table[CLEAN][method]
            if 0.0 not in finite or 0.0 not in clean:
                continue
            dense = finite[0.0]
            best = max(finite, key=lambda t: (finite[t].mean, -t))
            usable = {
                t: c for t, c in finite.items() if clean[t].mean >= clean[0.0].mean - max_drop
            }
            ubest = max(usable, key=lambda t: (usable[t].mean, -t))
            top = usable[ubest]
            if ubest == 0.0:
                verdict = "no (dense is best)"
            elif top.n < 2 or dense.n < 2:
                verdict = "higher (one seed: no interval)"
            elif top.low > dense.high:
                verdict = "yes (95% intervals disjoint)"
            else:
                verdict = "higher, intervals overlap"
            lines.append(
                f"| {metric} | {method} | {table_cell(dense)} | {best:g}: {fmt(finite[best].mean)} "
                f"| {ubest:g}: {table_cell(top)} | {verdict} |"
            )
    return [*lines, ""]


def flags(store: StoredResults) -> list[str]:
    by_model: dict[str, list[str]] = defaultdict(list)
    for r in store.results():
        for f in r["numbers"].get("flags", []):
            by_model[r["model_key"]].append(f"{r['measurement']}: {f}")
    if not by_model:
        return ["No model was flagged.", ""]
    lines = [f"{len(by_model)} of {len(store.models())} models carry flags:", ""]
    for key in sorted(by_model):
        lines.append(f"- `{key}`")
        lines += [f"  - {f}" for f in by_model[key]]
    return [*lines, ""]


def stage_times(store: StoredResults, run_dirs: list[Path]) -> list[str]:
    """Compute seconds per stage (summed over models, i.e. core-seconds when workers
    run in parallel) and the study's wall time from its log."""
    per: dict[str, float] = defaultdict(float)
    for m in store.models():
        per["dense training" if m.method == "dense" else f"pruning + retraining ({m.method})"] += (
            m.seconds or 0.0
        )
    for r in store.results():
        per[r["measurement"]] += r.get("seconds") or 0.0
    total = sum(per.values())
    lines = ["| stage | seconds (summed over models) | share |", "| --- | --- | --- |"]
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.0f} | {v / total:.1%} |")
    lines.append(f"| **all** | {total:.0f} | |")
    for run_dir in run_dirs:
        log = run_dir / "run.log"
        if log.exists():
            lines += ["", f"`{run_dir.name}`: {wall_time(log)}"]
    return [*lines, ""]


def wall_time(log: Path) -> str:
    """Wall time of every start of `sparserobust run` in ``log``, summed: a finished
    start logs "study done in Xs"; an interrupted one counts to its last line."""
    events = []
    for line in log.read_text().splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)", line)
        if stamp:
            events.append((datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f"), line))
    starts = [
        i for i, (_, ln) in enumerate(events) if re.search(r"pipeline: study \S+ \(config", ln)
    ]
    spans = []
    for k, i in enumerate(starts):
        begin = i - 1 if i > 0 and " loaded " in events[i - 1][1] else i  # data loading
        end = starts[k + 1] if k + 1 < len(starts) else len(events)
        if end < len(events) and " loaded " in events[end - 1][1]:
            end -= 1  # the next start's data loading
        done = [re.search(r"study done in ([0-9.]+)s", ln) for _, ln in events[i:end]]
        finished = [float(m.group(1)) for m in done if m]
        spans.append(
            finished[-1] if finished else (events[end - 1][0] - events[begin][0]).total_seconds()
        )
    return (
        f"Wall time of the study (from run.log): {sum(spans):.0f} s over {len(spans)} "
        f"start(s) ({', '.join(f'{x:.0f} s' for x in spans)})."
    )


def write_tables(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    plots: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    command: str | None = None,
) -> Path:
    """Write ``tables.md`` (and the plots) of the study in ``run_dirs`` into ``out_dir``:
    the ``metrics`` tables (default :data:`DEFAULT_METRICS`, those the study has), peaks,
    verify tables where the study has them, flags and compute per stage; one PNG per
    metric of ``plots`` and ``verify_solve_time.png`` where MILP times are stored.
    ``seeds`` reads only those seeds; ``command`` is how the tables say they were made.
    Returns the path of ``tables.md``; StoreError or ConfigError (one line) when the
    runs cannot be read together or hold no model of the seeds asked for."""
    dirs = [Path(d) for d in run_dirs]
    out_path = Path(out_dir)
    with RunReader(dirs, seeds) as store:
        if not store.models():
            raise StoreError("these runs have no model yet: run the study first")
        data = gather(store, bootstrap=False)
        table = data.table
        info = metric_info(store)
        add_combined(store, table, info)
        wanted = [m for m in dict.fromkeys(metrics or DEFAULT_METRICS) if m in table]
        targets = sorted({t for cells in table[CLEAN].values() for t in cells})
        seeds_read = sorted({m.seed for m in store.models()})
        names = " ".join(str(d) for d in dirs)
        made = command or (
            f"python scripts/reproduction_tables.py {names} {out_path}"
            + "".join(f" --seed {s}" for s in seeds or [])
        )
        out = [
            f"# Tables for `{', '.join(d.name for d in dirs)}`",
            "",
            f"Generated by `{made}`. "
            f"Seeds {seeds_read}; cells are the mean over seeds [95% Student-t interval]. "
            "Columns are target sparsities (fraction of Linear/Conv weights removed).",
            "",
            "## Clean accuracy and metrics",
            "",
            *metric_table(CLEAN, table, targets),
        ]
        for metric in wanted:
            out += metric_table(metric, table, targets)
        out += ["## Peaks (sparsity of the largest mean)", "", *peaks(wanted, table, info)]
        times = solve_times(store)
        out += solve_time_table(times)
        out += bracket_table(data)
        out += exact_gap_table(table, store)
        out += sound_change_table(data)
        out += ["## Evaluation flags", "", *flags(store)]
        out += ["## Compute per stage", "", *stage_times(store, dirs)]
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "tables.md").write_text("\n".join(out))
    if times:
        (out_path / "verify_solve_time.png").write_bytes(solve_time_plot(times))
    for metric in plots:
        if metric in table:
            (out_path / f"{slug(metric)}.png").write_bytes(metric_plot(metric, table))
    return out_path / "tables.md"


__all__ = [
    "DEFAULT_METRICS",
    "add_combined",
    "flags",
    "metric_table",
    "peaks",
    "stage_times",
    "wall_time",
    "write_tables",
]
