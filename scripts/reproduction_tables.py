"""Paper-reproduction tables and plots from a finished study's run directory.

    python scripts/reproduction_tables.py RUN_DIR [RUN_DIR ...] OUT_DIR [--metric NAME ...]

Reads ``RUN_DIR/results.sqlite`` (written by ``sparserobust run``; several run
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

``--seed N`` (repeatable) reads only those seeds' models, e.g. while a study is running.

Every number in ``docs/reproduction.md`` comes from these files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sparserobust.config import StudyConfig
from sparserobust.measurements import Record
from sparserobust.report import (
    CLEAN,
    Cell,
    _plot,
    _slug,
    interval,
    metric_info,
    robustness_metrics,
)
from sparserobust.store import ResultStore
from sparserobust.verdict import (
    brackets,
    change_text,
    gather,
    same_points,
    sound_bounds,
    sound_change,
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


def add_combined(store: Any, table: dict, info: dict) -> None:
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


def fmt(v: float, digits: int = 3) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"


def cell_text(c: Cell | None, seeds: int = 0) -> str:
    """Mean [95% interval]; ``(n=k)`` where only k of ``seeds`` seeds have a number
    (e.g. a model that diverged and was not measured)."""
    if c is None:
        return ""
    text = fmt(c.mean)
    if c.n > 1 and math.isfinite(c.low):
        text += f" [{fmt(c.low)}, {fmt(c.high)}]"
    if c.n < seeds:
        text += f" (n={c.n})"
    return text


def metric_table(metric: str, table: dict, targets: list[float]) -> list[str]:
    lines = [f"#### {metric}", ""]
    lines.append("| method | " + " | ".join(f"{t:g}" for t in targets) + " |")
    lines.append("| --- " * (len(targets) + 1) + "|")
    seeds = max(c.n for cells in table[metric].values() for c in cells.values())
    for method, cells in sorted(table[metric].items()):
        row = " | ".join(cell_text(cells.get(t), seeds) for t in targets)
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
                f"| {metric} | {method} | {cell_text(dense)} | {best:g}: {fmt(finite[best].mean)} "
                f"| {ubest:g}: {cell_text(top)} | {verdict} |"
            )
    return [*lines, ""]


def flags(store: Any) -> list[str]:
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


def solve_times(store: Any) -> dict[tuple[str, float], dict[str, dict[float, list[float]]]]:
    """The verify measurement's MILP cost per (method, target sparsity) and epsilon, one
    value per seed: ``{(method, target): {"median_s" | "p95_s" | "timeout_rate": {eps:
    [...]}}}``. Solve times are wall-clock metadata (``numbers["solve_time"]``), not
    numbers of the study; the timeout rate is timeouts / points decided exactly."""
    out: dict[tuple[str, float], dict[str, dict[float, list[float]]]] = {}
    for r in store.results():
        if not r["measurement"].startswith("verify:"):
            continue
        n_exact = int(r["params"].get("n_exact") or 0)
        if not n_exact:
            continue
        n_exact = min(n_exact, int(r["params"].get("n") or n_exact))
        per = out.setdefault((r["method"], float(r["target_sparsity"])), {})
        if r.get("seconds") is not None:  # the whole measurement, all epsilons
            per.setdefault("model_s", {}).setdefault(0.0, []).append(float(r["seconds"]))
        timeouts = {
            float(rec["eps"]): rec["value"]
            for rec in r["numbers"].get("records", [])
            if rec["metric"] == "timeouts"
        }
        for eps_key, t in (r["numbers"].get("solve_time") or {}).items():
            eps = float(eps_key)
            for key in ("median_s", "p95_s"):
                if t.get(key) is not None:
                    per.setdefault(key, {}).setdefault(eps, []).append(float(t[key]))
            if eps in timeouts:
                rate = float(timeouts[eps]) / n_exact
                per.setdefault("timeout_rate", {}).setdefault(eps, []).append(rate)
    return out


def solve_time_table(times: dict) -> list[str]:
    """Markdown: per epsilon, one row per method and target sparsity with the MILP's
    median and p95 seconds per point and its timeout rate (mean over seeds; max)."""
    if not times:
        return []
    epsilons = sorted(
        {e for per in times.values() for k, v in per.items() if k != "model_s" for e in v}
    )
    lines = [
        "## Exact verification cost (MILP)",
        "",
        "Per point: median and 95th-percentile wall seconds of the exact decision (CROWN "
        "pre-check included), and the share of points that hit the time limit; mean over "
        "seeds [largest seed]. Wall times vary from run to run and machine to machine.",
        "",
    ]
    if any("model_s" in per for per in times.values()):
        levels = sorted({t for _, t in times})
        methods = sorted({m for m, _ in times if m != "dense"}) or ["dense"]
        lines += [
            "#### Seconds per model (the whole verify measurement: every epsilon, IBP, "
            "CROWN, PGD pre-check and MILP)",
            "",
            "| method | " + " | ".join(f"{t:g}" for t in levels) + " |",
            "| --- | " + " | ".join("---" for _ in levels) + " |",
        ]
        for method in methods:
            cells = []
            for t in levels:
                per = times.get((method, t)) or times.get(("dense", t)) or {}
                cells.append(_mean_max(per, "model_s", 0.0, 0))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for eps in epsilons:
        lines += [
            f"#### eps {eps:g}",
            "",
            "| method | sparsity | median s | p95 s | timeout rate |",
            "| --- | --- | --- | --- | --- |",
        ]
        for (method, target), per in sorted(times.items()):
            med, p95 = _mean_max(per, "median_s", eps), _mean_max(per, "p95_s", eps)
            rate = _mean_max(per, "timeout_rate", eps, 3)
            lines.append(f"| {method} | {target:g} | {med} | {p95} | {rate} |")
        lines.append("")
    return lines


def clever_vs_exact(store: Any) -> dict[tuple[str, float, float], list[tuple[int, int, int]]]:
    """Per (method, target sparsity, eps), one ``(points, over, under)`` per seed: on the
    points that have both a CLEVER l_inf score and an exact decision, how many CLEVER
    calls robust (score > eps) that have a counterexample (``over``: it overestimates)
    and how many it calls not robust that are verified (``under``). Points misclassified
    clean count as not robust for both."""
    clever: dict[str, list[float]] = {}
    exact: dict[str, list[dict]] = {}
    rows: dict[str, Any] = {}
    for r in store.results():
        if r["measurement"] == "clever:linf":
            clever[r["model_key"]] = [float(v) for v in r["numbers"].get("scores", [])]
        elif r["measurement"] == "verify:linf":
            exact[r["model_key"]] = (r["numbers"].get("detail") or {}).get("epsilons", [])
            rows[r["model_key"]] = r
    out: dict[tuple[str, float, float], list[tuple[int, int, int]]] = {}
    for key in sorted(clever.keys() & exact.keys()):
        scores, r = clever[key], rows[key]
        for entry in exact[key]:
            points = (entry.get("exact") or {}).get("points", [])
            eps = float(entry["epsilon"])
            pairs = [(scores[p["index"]], p) for p in points if p["index"] < len(scores)]
            over = sum(
                s > eps and p["status"] == "counterexample" and p["by"] != "clean" for s, p in pairs
            )
            under = sum(s <= eps and p["status"] == "verified" for s, p in pairs)
            cell = (r["method"], float(r["target_sparsity"]), eps)
            out.setdefault(cell, []).append((len(pairs), over, under))
    return out


def exact_gap_table(table: dict, store: Any) -> list[str]:
    """Markdown: per epsilon, how far each attack's robust accuracy and CLEVER's estimate
    are from the exact answer, per method and sparsity (means over seeds)."""
    exact_metric = "verify_linf exact robust_acc@{:g}"
    epsilons = sorted(
        float(m.split("@")[1])
        for m in table
        if re.fullmatch(r"verify_linf exact robust_acc@[0-9.]+", m)
    )
    if not epsilons:
        return []
    cv = clever_vs_exact(store)
    lines = [
        "## Distance from the exact answer (verify)",
        "",
        "Exact robust accuracy (verified share; `[.. upper]` where points timed out), and "
        "each attack's robust accuracy minus it, on the same points where the study "
        "attacks the verified points (mean over seeds; an attack can only be at or above "
        "the exact value). CLEVER l_inf: of the points with a score and an exact "
        "decision, those it calls robust (score > eps) that have a counterexample "
        "(over) and those it calls not robust that are verified (under), summed over seeds.",
        "",
    ]
    attacks = sorted(
        {m.split(" robust_acc@")[0] for m in table if re.search(r"_linf robust_acc@", m)}
        - {"verify_linf exact"}
    )
    for eps in epsilons:
        ex = table.get(exact_metric.format(eps), {})
        up = table.get(f"verify_linf exact robust_acc upper@{eps:g} (not robustness)", {})
        lines += [
            f"#### eps {eps:g}",
            "",
            "| method | sparsity | exact | "
            + " | ".join(f"{a} - exact" for a in attacks)
            + " | CLEVER over / under (points) |",
            "| --- | --- | --- | " + " | ".join("---" for _ in attacks) + " | --- |",
        ]
        cells = {
            ("dense" if target == 0 else method, target): method
            for method in sorted(ex)
            for target in sorted(ex[method])
        }
        for (name, target), method in sorted(cells.items(), key=lambda kv: (kv[0][1] > 0, kv[0])):
            e = ex[method][target].mean
            u = up.get(method, {}).get(target)
            exact_txt = fmt(e) + (f" [{fmt(u.mean)}]" if u and u.mean > e + 1e-9 else "")
            gaps = []
            for a in attacks:
                c = table.get(f"{a} robust_acc@{eps:g}", {}).get(method, {}).get(target)
                gaps.append("-" if c is None else f"{round(c.mean - e, 3) + 0.0:+.3f}")
            seeds = cv.get((name, target, eps))
            cl = "-"
            if seeds:
                n = sum(s[0] for s in seeds)
                cl = f"{sum(s[1] for s in seeds)} / {sum(s[2] for s in seeds)} of {n}"
            lines.append(
                f"| {name} | {target:g} | {exact_txt} | " + " | ".join(gaps) + f" | {cl} |"
            )
        lines.append("")
    return lines


def bracket_table(data: Any) -> list[str]:
    """Markdown: one row per model (means over seeds) and one column per verified
    epsilon, each cell ``CROWN <= exact <= attacked`` (exact as ``low-high`` where points
    timed out; attacked = the lowest robust accuracy of any attack at that epsilon)."""
    table = brackets(data)
    if not table:
        return []
    keys = sorted(table)
    lines = [
        "## Bracket per model (verify)",
        "",
        "Each cell: CROWN certified <= exact (MILP; `low-high` where points timed out) <= "
        "attacked (the lowest robust accuracy of any attack), mean over seeds; `!` marks a "
        "broken inequality (a soundness bug).",
        "",
        "| model | " + " | ".join(f"l_{n} eps {e:g}" for n, e in keys) + " |",
        "| --- | " + " | ".join("---" for _ in keys) + " |",
    ]
    rows: dict[tuple[str, float], list[str]] = {}
    for k, key in enumerate(keys):
        for b in table[key]:
            exact = fmt(b.exact)
            if math.isfinite(b.exact_upper) and b.exact_upper > b.exact + 1e-6:
                exact += f"-{fmt(b.exact_upper)}"
            cell = f"{fmt(b.crown)} <= {exact} <= {fmt(b.attacked)}" + (" !" if b.broken else "")
            rows.setdefault((b.method, b.sparsity), [""] * len(keys))[k] = cell
    for (method, s), cells in sorted(rows.items(), key=lambda kv: (kv[0][1] > 0, kv[0])):
        name = "dense" if s == 0 else f"{method} {s * 100:g}%"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def sound_change_table(data: Any) -> list[str]:
    """Markdown: per epsilon, each model's sound bounds on its true robust accuracy
    (exact verified share <= true <= min(exact upper, attacks)) and the sound bounds on
    its change from the dense model and from the level before (means over shared seeds);
    'up' / 'down' where the change's bounds exclude 0. Empty unless the study's attacks
    ran on the verified points."""
    if not same_points(data.config):
        return []
    epsilons = sorted(
        {r.eps for r in data.info.values() if r.metric == "exact_robust_accuracy" and r.eps}
    )
    if not epsilons:
        return []
    lines = [
        "## Sound bounds and changes (verify)",
        "",
        "Per model: `[lower, upper]` bounds on the true robust accuracy on the verified "
        "points (lower = MILP-verified share, upper = the smaller of the exact upper share "
        "and every attack's robust accuracy), mean over seeds. A change's bounds are "
        "`[mean(lower - upper of the other), mean(upper - lower of the other)]` over the "
        "seeds both have: 'up' or 'down' where they exclude 0, so the change is proven, "
        "not estimated.",
        "",
    ]

    def change(a: dict, b: dict | None) -> str:
        return change_text(sound_change(a, b) if b else None)

    for eps in epsilons:
        bounds = sound_bounds(data, "inf", eps)
        lines += [
            f"#### eps {eps:g}",
            "",
            "| method | sparsity | bounds | change from dense | change from the level before |",
            "| --- | --- | --- | --- | --- |",
        ]
        methods = sorted({m for m, _ in bounds})
        dense = next((bounds[(m, 0.0)] for m in methods if (m, 0.0) in bounds), None)
        if dense is not None:
            lows, ups = zip(*dense.values(), strict=True)
            lines.append(
                f"| dense | 0 | [{fmt(sum(lows) / len(lows))}, {fmt(sum(ups) / len(ups))}]"
                " | - | - |"
            )
        for method in methods:
            levels = sorted(s for m, s in bounds if m == method and s > 0)
            before = dense
            for s in levels:
                per = bounds[(method, s)]
                lows, ups = zip(*per.values(), strict=True)
                lines.append(
                    f"| {method} | {s:g} | [{fmt(sum(lows) / len(lows))}, "
                    f"{fmt(sum(ups) / len(ups))}] | {change(per, dense)} | {change(per, before)} |"
                )
                before = per
        lines.append("")
    return lines


def _mean_max(per: dict, key: str, eps: float, digits: int = 2) -> str:
    vals = per.get(key, {}).get(eps, [])
    if not vals:
        return "-"
    return f"{sum(vals) / len(vals):.{digits}f} [{max(vals):.{digits}f}]"


def solve_time_plot(times: dict) -> bytes:
    """PNG against sparsity, one line per method (and epsilon): the verify measurement's
    seconds per model (log scale), the MILP's p95 seconds per point (log scale) and its
    timeout rate (mean over seeds; dense drawn at sparsity 0 of every method)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    methods = sorted({m for m, _ in times if m != "dense"})
    epsilons = sorted(
        {e for per in times.values() for k, v in per.items() if k != "model_s" for e in v}
    )
    styles = ["-", "--", ":", "-."]
    panels = [("model_s", [0.0]), ("p95_s", epsilons), ("timeout_rate", epsilons)]
    for ax, (key, eps_list) in zip(axes, panels, strict=True):
        for k, eps in enumerate(eps_list):
            for method in methods:
                pts = []
                for t in sorted(t for m, t in times if m in (method, "dense")):
                    per = times.get((method, t)) or times.get(("dense", t)) or {}
                    vals = per.get(key, {}).get(eps, [])
                    if vals and (key == "timeout_rate" or sum(vals) > 0):  # log axes
                        pts.append((1 - t, sum(vals) / len(vals)))
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    label = method if key == "model_s" else f"{method} eps {eps:g}"
                    ax.plot(xs, ys, styles[k % 4], marker="o", ms=3, label=label)
    titles = ("verify seconds per model", "p95 seconds per point", "timeout rate")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("share of weights kept")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def stage_times(store: Any, run_dirs: list[Path]) -> list[str]:
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


class Runs:
    """Several run directories of one study that differ only in their seeds, read as
    one store (``models()`` and ``results()`` concatenated)."""

    def __init__(self, run_dirs: list[Path], seeds: list[int] | None = None) -> None:
        self.seeds = set(seeds) if seeds else None  # read only these seeds' models
        self.stores = [ResultStore(d, create=False) for d in run_dirs]
        configs = []
        for d, st in zip(run_dirs, self.stores, strict=True):
            config = json.loads(st.get_meta("config") or "{}")
            for key in StudyConfig.NOT_HASHED:  # name, device, layout...: not the numbers
                config.pop(key, None)
            configs.append((d, config.pop("seeds", []), config))
        seen: set[int] = set()
        for d, seeds, config in configs:
            if config != configs[0][2]:
                raise ValueError(f"{d} differs from {configs[0][0]} in more than its seeds")
            if seen & set(seeds):
                raise ValueError(f"{d} repeats seeds {sorted(seen & set(seeds))}")
            seen |= set(seeds)

    def get_meta(self, key: str) -> str | None:
        """The first run's metadata (the runs' configs differ only in their seeds)."""
        return self.stores[0].get_meta(key)  # type: ignore[no-any-return]

    def models(self) -> list[Any]:
        return [
            m
            for st in self.stores
            for m in st.models()
            if self.seeds is None or m.seed in self.seeds
        ]

    def results(self) -> list[dict[str, Any]]:
        return [
            r
            for st in self.stores
            for r in st.results()
            if self.seeds is None or r["seed"] in self.seeds
        ]

    def close(self) -> None:
        for st in self.stores:
            st.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+", help="one or more run directories")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--metric", action="append", help="metric to tabulate (repeatable)")
    ap.add_argument("--plot", action="append", help="metric to plot (repeatable)")
    ap.add_argument(
        "--seed", action="append", type=int, help="read only this seed's models (repeatable)"
    )
    args = ap.parse_args(argv)
    for run_dir in args.run_dirs:
        if not (run_dir / "results.sqlite").exists():
            print(f"error: {run_dir} has no results.sqlite: run the study first", file=sys.stderr)
            return 2
    try:
        store = Runs(args.run_dirs, args.seed)
    except ValueError as exc:
        print(f"error: {exc}: merge only runs of one config with other seeds", file=sys.stderr)
        return 2
    if not store.models():
        have = sorted({m.seed for st in store.stores for m in st.models()})
        why = (
            f"no model of seed(s) {args.seed} in these runs (they have seeds {have}): pick "
            "one of those"
            if args.seed and have
            else "these runs have no model yet: run the study first"
        )
        print(f"error: {why}", file=sys.stderr)
        store.close()
        return 2
    try:
        data = gather(store, bootstrap=False)  # type: ignore[arg-type]
        table = data.table
        info = metric_info(store)  # type: ignore[arg-type]
        add_combined(store, table, info)
        wanted = [m for m in dict.fromkeys(args.metric or DEFAULT_METRICS) if m in table]
        targets = sorted({t for cells in table[CLEAN].values() for t in cells})
        seeds = sorted({m.seed for m in store.models()})
        names = " ".join(str(d) for d in args.run_dirs)
        out = [
            f"# Tables for `{', '.join(d.name for d in args.run_dirs)}`",
            "",
            f"Generated by `python scripts/reproduction_tables.py {names} {args.out_dir}"
            + "".join(f" --seed {s}" for s in args.seed or [])
            + "`. "
            f"Seeds {seeds}; cells are the mean over seeds [95% Student-t interval]. "
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
        out += ["## Compute per stage", "", *stage_times(store, args.run_dirs)]
    finally:
        store.close()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "tables.md").write_text("\n".join(out))
    if times:
        (args.out_dir / "verify_solve_time.png").write_bytes(solve_time_plot(times))
    for metric in args.plot or []:
        if metric in table:
            (args.out_dir / f"{_slug(metric)}.png").write_bytes(_plot(metric, table))
    print(f"wrote {args.out_dir / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
