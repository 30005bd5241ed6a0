"""The reproduction tables of a study with the ``verify`` measurement: MILP cost per
model and point, brackets, each attack's and CLEVER's distance from the exact answer,
and sound bounds on robust accuracy and its changes.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sparserobust.report.brackets import (
    brackets,
    change_text,
    same_points,
    sound_bounds,
    sound_change,
)
from sparserobust.report.figures import subplots
from sparserobust.report.reader import StoredResults
from sparserobust.report.text import fmt


def solve_times(
    store: StoredResults,
) -> dict[tuple[str, float], dict[str, dict[float, list[float]]]]:
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


def clever_vs_exact(
    store: StoredResults,
) -> dict[tuple[str, float, float], list[tuple[int, int, int]]]:
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


def exact_gap_table(table: dict, store: StoredResults) -> list[str]:
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

    fig, axes = subplots(1, 3, figsize=(14, 3.8))
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
    return buf.getvalue()


__all__ = [
    "bracket_table",
    "clever_vs_exact",
    "exact_gap_table",
    "solve_time_plot",
    "solve_time_table",
    "solve_times",
    "sound_change_table",
]
