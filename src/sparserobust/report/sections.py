"""The report's markdown sections: verdict tables and sentences, the summary over
runs, the dense control front, method rankings, brackets, warnings and every number.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sparserobust.report.brackets import (
    brackets,
    change_text,
    same_points,
    sound_bounds,
    sound_change,
)
from sparserobust.report.figures import metric_plot
from sparserobust.report.front import (
    ABOVE,
    BELOW,
    ON,
    OUTSIDE,
    FrontPosition,
    front_positions,
    has_front,
    mean_front,
)
from sparserobust.report.study import CLEAN, NORMS, StudyData
from sparserobust.report.text import cell_text, md_table, num, pct, slug, span
from sparserobust.report.verdicts import (
    NOT_MEASURED,
    below_text,
    method_rankings,
    own_grid_methods,
    ranking_sentence,
    verdict_rows,
    warning_summary,
)


def flagged_text(data: StudyData, label: str, method: str) -> str:
    """`` (depends on a flagged number)`` when a number the verdict of ``method`` for
    ``label`` is computed from (its own or the dense model's value, or a clean accuracy
    that decides the accuracy budget) cannot be right; else empty."""
    for x in data.implausible:
        if x.label in (label, CLEAN) and x.method in (method, "dense"):
            return " (depends on a flagged number)"
    return ""


def verdict_section(
    runs: list[tuple[StudyData, dict[str, str]]], max_drop: float
) -> tuple[list[str], list[str]]:
    """Markdown of the verdict tables (one per norm; one row per method, or per run and
    method when several runs are given) and the generated sentences."""
    lines: list[str] = []
    sentences: list[str] = []
    several = len(runs) > 1
    for norm in ("inf", "2"):
        labels = sorted({h[norm] for _, h in runs if norm in h})
        if not labels:
            continue
        lines += [f"### {NORMS[norm]}: {' / '.join(labels)}", ""]
        mixed = len(labels) > 1  # runs with different headlines: name each row's
        header = [
            *(["run"] if several else []),
            *(["headline"] if mixed else []),
            "method",
            "best sparsity (clean acc.)",
            "value [95%]",
            "change from dense [95%]",
            "verdict",
            "below dense",
        ]
        fronted = any(has_front(d) for d, h in runs if norm in h)
        if fronted:
            header.append("vs dense front [95%]")
        rows = []
        said: list[str] = []
        for data, heads in runs:
            if norm not in heads:
                continue
            where = {(p.method, p.target): p for p in front_positions(data, heads[norm])}
            for v in verdict_rows(data, heads[norm], max_drop):
                best = (
                    "none measured"
                    if v.verdict == NOT_MEASURED
                    else "none in budget"
                    if v.best is None or v.clean is None
                    else f"{pct(v.best)} ({num(v.clean.mean)})"
                )
                value = (
                    "" if v.cell is None else f"{num(v.cell.mean)}{span(v.cell.low, v.cell.high)}"
                )
                d, lo, hi = v.change
                change = "" if v.best is None else f"{d:+.3f}{span(lo, hi, signed=True)}"
                rows.append(
                    [
                        *([data.name] if several else []),
                        *([v.label] if mixed else []),
                        v.method,
                        best,
                        value,
                        change,
                        v.verdict + flagged_text(data, v.label, v.method),
                        below_text(v),
                        *(
                            [
                                front_text(
                                    where.get((v.method, v.best)) if v.best is not None else None
                                )
                            ]
                            if fronted
                            else []
                        ),
                    ]
                )
                said.append((f"{data.name}, " if several else "") + v.sentence)
        lines += md_table(header, rows)
        lines += [*(f"- {s}" for s in said), ""]
        sentences += said
    return lines, sentences


def summary_section(runs: list[tuple[StudyData, dict[str, str]]], max_drop: float) -> list[str]:
    """One table over runs (datasets, models): per method, the l_inf verdict (better than
    dense / no gain / worse), the best sparsity within the accuracy budget, its change
    from dense [95%] and its position against the dense control front."""
    rows = []
    for data, heads in runs:
        label = heads.get("inf")
        if label is None:
            continue
        where = {(p.method, p.target): p for p in front_positions(data, label)}
        for v in verdict_rows(data, label, max_drop):
            best = (
                "–" if v.best is None or v.clean is None else f"{pct(v.best)} ({num(v.clean.mean)})"
            )
            d, lo, hi = v.change
            rows.append(
                [
                    str(data.config.get("dataset")),
                    str(data.config.get("model")),
                    v.method,
                    f"`{label}`",
                    v.verdict + flagged_text(data, v.label, v.method),
                    best,
                    "" if v.best is None else f"{d:+.3f}{span(lo, hi, signed=True)}",
                    front_text(where.get((v.method, v.best)) if v.best is not None else None)
                    if has_front(data)
                    else "no front",
                ]
            )
    if not rows:
        return []
    header = [
        "dataset",
        "model",
        "method",
        "l_inf headline",
        "C1 verdict",
        "best sparsity (clean acc.)",
        "change from dense [95%]",
        "vs dense front [95%]",
    ]
    return [
        "## Summary: does sparsity help, per dataset and model",
        "",
        *md_table(header, rows),
        "",
    ]


def front_text(p: FrontPosition | None) -> str:
    """A model's position against the dense front, with the difference and interval."""
    if p is None:
        return ""
    if p.position == OUTSIDE:
        return OUTSIDE
    d, lo, hi = p.difference
    return f"{p.position} ({d:+.3f}{span(lo, hi, signed=True)})"


def front_section(data: StudyData, label: str) -> list[str]:
    """The dense control front's section: each pruned model against a dense model of
    the same clean accuracy (:mod:`sparserobust.report.front`); empty without a front."""
    positions = front_positions(data, label)
    if not positions:
        return []
    ids = [p[0] for p in mean_front(data, label) if p[0] != "dense"]
    lines = [
        "## Against the dense control front",
        "",
        f"Is each pruned model more robust ({label}) than a dense model of the same clean "
        f"accuracy? The front: the dense model and {len(ids)} dense models trained to lower "
        f"accuracy by another route ({', '.join(f'`{i}`' for i in ids)}; dashed in the "
        "trade-off plot), joined per seed by straight lines. Difference: the model minus "
        "its seed's front at its own clean accuracy, mean over seeds [95% Student-t, "
        "paired by seed]; above / below: the interval excludes 0; outside: less accurate "
        "than every front model.",
        "",
    ]
    rows = []
    for p in positions:
        d, lo, hi = p.difference
        rows.append(
            [
                p.method,
                pct(p.target),
                num(p.clean),
                num(p.robust),
                num(p.front),
                "" if not math.isfinite(d) else f"{d:+.3f}{span(lo, hi, signed=True)}",
                p.position,
            ]
        )
    header = [
        "method",
        "sparsity",
        "clean",
        "robust",
        "front at same clean",
        "difference",
        "position",
    ]
    lines += md_table(header, rows)
    counts = {k: sum(p.position == k for p in positions) for k in (ABOVE, ON, BELOW, OUTSIDE)}
    lines += [
        "",
        f"{counts[ABOVE]} model kinds lie above the front, {counts[ON]} on it, "
        f"{counts[BELOW]} below and {counts[OUTSIDE]} outside its accuracy range"
        + (
            f"; {len(positions) - sum(counts.values())} are compared on one seed only "
            "(no interval: run 2 or more seeds)."
            if len(positions) > sum(counts.values())
            else "."
        ),
        "",
    ]
    return lines


def ranking_section(data: StudyData, heads: dict[str, str]) -> list[str]:
    """Per headline: at each weight sparsity that two or more methods share, the methods
    best first, and whether the best one's lead over the next is clear."""
    lines: list[str] = []
    for norm, label in heads.items():
        ranks = method_rankings(data, label)
        if not ranks:
            continue
        methods = sorted({m for r in ranks for m, _, _ in r.order})
        lines += [f"### {NORMS[norm]}: {label}", ""]
        body = []
        for r in ranks:
            at = {m: (c, clean) for m, c, clean in r.order}
            row = [pct(r.target)]
            for m in methods:
                c, clean = at.get(m, (None, None))
                row.append(
                    ""
                    if c is None
                    else f"{num(c.mean)}{span(c.low, c.high)}"
                    + ("" if clean is None else f" ({num(clean.mean)})")
                )
            d, low, high = r.lead
            row += [
                r.order[0][0] if r.clear else f"{r.order[0][0]} ~ {r.order[1][0]}",
                f"{d:+.3f}{span(low, high, signed=True)}",
            ]
            body.append(row)
        lines += md_table(["sparsity", *methods, "most robust", "lead over next [95%]"], body)
        lines += [*(f"- {ranking_sentence(r, label)}" for r in ranks), ""]
    if not lines:
        return []
    own = [m for m in own_grid_methods(data.config) if m in data.table.get(CLEAN, {})]
    note = (
        f" Not ranked here: {', '.join(own)}, on its own grid (share of units removed, not "
        "weight sparsity); see Details."
        if own
        else ""
    )
    return [
        "## Which method at each sparsity",
        "",
        "Values are means [95% interval] (clean accuracy); the lead is the best method minus "
        "the next, paired over seeds (or images); `a ~ b` means the interval includes 0." + note,
        "",
        *lines,
    ]


def bracket_section(data: StudyData) -> list[str]:
    """Per verified epsilon, each model's certified <= exact <= attacked line."""
    table = brackets(data)
    if not table:
        return []
    lines = [
        "## Certified, exact and attacked robust accuracy",
        "",
        "Per model (mean over seeds): certified (IBP, CROWN) <= exact (MILP; a range where "
        "points timed out, counted as not robust and as robust) <= attacked (the strongest "
        "attack at that epsilon).",
        "",
    ]
    if not same_points(data.config):
        lines += [
            "The exact and certified values are not on the same points as the attacks "
            "(verify `n`/`n_exact` differ from `eval.n`): compare them with care.",
            "",
        ]
    else:
        lines += [
            "Change from dense, proven: bounds on the change of the true robust accuracy on "
            "these points (this model's verified share minus dense's lowest upper bound, "
            "and its lowest upper bound minus dense's verified share; mean over seeds). "
            "'up' or 'down' only where both bounds agree: a proof, not an estimate.",
            "",
        ]
    for (norm, eps), rows in table.items():
        lines += [f"### {NORMS[norm]}, eps {eps:g}", ""]
        bounds = sound_bounds(data, norm, eps) if same_points(data.config) else {}
        dense = next((v for (_, s), v in bounds.items() if s == 0.0), None)
        body = []
        for b in rows:
            exact = num(b.exact)
            if math.isfinite(b.exact_upper) and b.exact_upper > b.exact:
                exact = f"{num(b.exact)}-{num(b.exact_upper)}"
            line = f"{num(b.ibp)} <= {num(b.crown)} <= {exact} <= {num(b.attacked)}"
            name = "dense" if b.method == "dense" else f"{b.method} {pct(b.sparsity)}"
            here = bounds.get((b.method, b.sparsity))
            change = sound_change(here, dense) if here and dense and b.sparsity > 0 else None
            proven = change_text(change)
            check = f"**{b.broken}: a bug**" if b.broken else ""
            body.append([name, line, b.attack or "-", proven, check])
        header = ["model", "IBP <= CROWN <= exact <= attacked", "attack"]
        lines += md_table([*header, "change from dense, proven", "check"], body)
        lines.append("")
    return lines


def warnings_section(data: StudyData) -> list[str]:
    """The evaluation warnings: one line per method and kind, the full list folded."""
    lines = ["## Evaluation warnings", ""]
    if not data.flags:
        return [*lines, "None raised.", ""]
    lines += [f"- {w}" for w in warning_summary(data)]
    lines += ["", f"<details><summary>All {len(data.flags)} warnings</summary>", ""]
    lines += [f"- `{key}` {meas}: {text}" for _, _, key, meas, text in data.flags]
    return [*lines, "", "</details>", ""]


def details_section(data: StudyData, image: Callable[[str, bytes | None], str | None]) -> list[str]:
    """Every number, grouped by norm and then by metric: a method x sparsity table and
    the metric's plot each."""
    lines: list[str] = []
    methods = sorted(data.table.get(CLEAN, {}))
    targets = sorted({t for m in methods for t in data.table[CLEAN][m]})
    if methods:
        lines += ["### Measured sparsity", ""]
        rows = [
            [
                m,
                *(
                    f"{data.table[CLEAN][m][t].sparsity:.4f}" if t in data.table[CLEAN][m] else ""
                    for t in targets
                ),
            ]
            for m in methods
        ]
        lines += md_table(["method", *(pct(t) for t in targets)], rows)
    groups: list[tuple[str, list[str]]] = [("Clean accuracy", [CLEAN] if methods else [])]
    for norm in ("inf", "2"):
        groups.append((NORMS[norm], [k for k in data.metrics if data.info[k].norm == norm]))
    groups.append(("No norm", [k for k in data.metrics if data.info[k].norm not in NORMS]))
    for title, labels in groups:
        if not labels:
            continue
        lines += [f"### {title}", ""]
        for label in sorted(
            labels, key=lambda k: (data.info[k].metric if k in data.info else "", k)
        ):
            lines += [f"#### {label}", ""]
            rows = [
                [m, *(cell_text(data.table[label].get(m, {}).get(t)) for t in targets)]
                for m in methods
            ]
            lines += md_table(["method", *(pct(t) for t in targets)], rows)
            lines += [image(slug(label), metric_plot(label, data.table)) or "", ""]
    return lines


__all__ = [
    "bracket_section",
    "details_section",
    "flagged_text",
    "front_section",
    "front_text",
    "ranking_section",
    "summary_section",
    "verdict_section",
    "warnings_section",
]
