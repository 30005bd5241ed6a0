"""Report: the verdict first, then figures, warnings and every number, from a results store.

Writes ``report.md`` and a self-contained ``report.html`` (plots embedded as base64
PNG, opens offline) plus the PNGs into ``RUN_DIR/report/``. The page opens with one
verdict table per norm (l_inf, l2) built from that norm's headline metric
(``report.headline_linf``/``headline_l2``, defaults in :mod:`sparserobust.verdict`),
one generated sentence per method, then the overview figure (small multiples against
sparsity), the clean-vs-robust trade-off with its Pareto front, security curves from
stored per-sample minimal norms, the warnings (one line per method and kind, the full
list folded), the diagnostics figure and, grouped by norm and metric, every number
with its plot. :func:`write_comparison` puts several run directories side by side
(``sparserobust compare``).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparserobust.control import (
    ABOVE,
    BELOW,
    ON,
    OUTSIDE,
    FrontPosition,
    front_positions,
    has_front,
    mean_front,
)
from sparserobust.errors import ConfigError, StoreError
from sparserobust.measurements import Record, records_of
from sparserobust.plausible import implausible
from sparserobust.pruning.masks import SPARSITY_NOTE
from sparserobust.rundir import check_output
from sparserobust.store import ResultStore
from sparserobust.utils import atomic_write
from sparserobust.verdict import (
    CLEAN,
    NORMS,
    NOT_MEASURED,
    Cell,
    StudyData,
    below_text,
    brackets,
    change_text,
    gather,
    headlines,
    interval,
    method_rankings,
    num,
    own_grid_methods,
    pct,
    ranking_sentence,
    same_points,
    sound_bounds,
    sound_change,
    span,
    tradeoff_metric,
    tradeoff_points,
    verdict_rows,
    warning_summary,
)

__all__ = [
    "CLEAN",
    "Cell",
    "collect",
    "interval",
    "metric_info",
    "robustness_metrics",
    "sweet_spots",
    "write_comparison",
    "write_report",
]
log = logging.getLogger(__name__)


def collect(store: ResultStore) -> tuple[dict[str, dict[str, dict[float, Cell]]], list[str]]:
    """``table[metric][method][target_sparsity] -> Cell`` with clean accuracy included,
    and the sorted list of metric labels (the stored records' labels). Dense models
    (sparsity 0) appear under every method so each curve starts at the dense model.
    Intervals are Student-t over seeds, as in version 0.1 (the report's own cells, with
    bootstrap intervals for few seeds, come from :func:`sparserobust.verdict.gather`)."""
    data = gather(store, bootstrap=False)
    return data.table, data.metrics


def metric_info(store: ResultStore) -> dict[str, Record]:
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _plot(metric: str, table: dict[str, dict[str, dict[float, Cell]]]) -> bytes:
    """One metric's PNG against sparsity (see :func:`sparserobust.figures.metric_plot`)."""
    from sparserobust.figures import metric_plot

    return metric_plot(metric, table)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.n > 1 or cell.kind == "bootstrap":
        return f"{_fmt(cell.mean)}{span(cell.low, cell.high)}"
    return _fmt(cell.mean)


def completeness(config: dict[str, Any], store: ResultStore) -> tuple[int, int, int, int]:
    """(models stored, models planned, results stored, results planned) of the study
    ``config`` (its stored dict); planned counts are 0 when the config cannot be read."""
    from sparserobust.config import config_from_dict
    from sparserobust.engine.tasks import model_key
    from sparserobust.errors import SparseRobustError
    from sparserobust.measurements import plan_cells
    from sparserobust.store import params_hash

    models = {m.model_key for m in store.models()}
    results = {
        (r["model_key"], r["measurement"], params_hash(r["params"])) for r in store.results()
    }
    try:
        study = config_from_dict(config)
    except SparseRobustError:
        return len(models), 0, len(results), 0
    want_models: set[str] = set()
    want_results: set[tuple[str, str, str]] = set()
    for seed in study.seeds:
        keys = [model_key(seed, "dense", 0.0)] + [
            model_key(seed, m, t) for m in study.pruning.methods for t in study.pruning.grid(m)
        ]
        want_models.update(keys)
        for cell in plan_cells(study.eval, seed):
            want_results.update((k, cell.key, params_hash(cell.params)) for k in keys)
    return (
        len(models & want_models),
        len(want_models),
        len(results & want_results),
        len(want_results),
    )


def data_warnings(store: ResultStore) -> list[tuple[str, str, str]]:
    """Stored numbers that cannot be right (:mod:`sparserobust.plausible`): (model key,
    measurement, what is wrong); a damaged or hand-edited database."""
    return [
        (x.model_key, x.measurement, x.what) for x in implausible(store.models(), store.results())
    ]


def flagged_text(data: StudyData, label: str, method: str) -> str:
    """`` (depends on a flagged number)`` when a number the verdict of ``method`` for
    ``label`` is computed from (its own or the dense model's value, or a clean accuracy
    that decides the accuracy budget) cannot be right; else empty."""
    for x in data.implausible:
        if x.label in (label, CLEAN) and x.method in (method, "dense"):
            return " (depends on a flagged number)"
    return ""


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def load_study(run_dir: str | Path, name: str = "") -> StudyData:
    """Read a run directory's store into :class:`~sparserobust.verdict.StudyData`;
    StoreError (one line) when it is not a run directory."""
    run = Path(run_dir)
    if not (run / "results.sqlite").is_file():
        raise StoreError(
            f"{run}: not a run directory (no results.sqlite); give a folder "
            "written by `sparserobust run`"
        )
    with ResultStore(run, readonly=True) as store:
        return gather(store, name)


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
                        *([front_text(where.get((v.method, v.best)))] if fronted else []),
                    ]
                )
                said.append((f"{data.name}, " if several else "") + v.sentence)
        lines += _table(header, rows)
        lines += [*(f"- {s}" for s in said), ""]
        sentences += said
    return lines, sentences


class SeedView:
    """A read-only view of a results store restricted to some of its seeds: its models,
    their results, and the stored config with ``seeds`` set to those seeds (so the
    report's completeness counts only them)."""

    def __init__(self, store: ResultStore, seeds: Sequence[int]) -> None:
        config = json.loads(store.get_meta("config") or "{}")
        have = list(config.get("seeds") or sorted({m.seed for m in store.models()}))
        missing = [s for s in seeds if s not in have]
        if missing or not seeds:
            raise ConfigError(
                f"--seed {', '.join(map(str, missing or seeds))}: this study's seeds are "
                f"{', '.join(map(str, have)) or 'none'}"
            )
        self.store, self.seeds = store, sorted(set(seeds))
        self.config = {**config, "seeds": self.seeds}

    def get_meta(self, key: str) -> str | None:
        if key == "config":
            return json.dumps(self.config, sort_keys=True)
        return self.store.get_meta(key)

    def models(self) -> list[Any]:
        return [m for m in self.store.models() if m.seed in self.seeds]

    def results(self) -> list[dict[str, Any]]:
        return [r for r in self.store.results() if r["seed"] in self.seeds]


def write_output(path: Path, write: Any, own_run: Path | None = None) -> None:
    """Atomically write one file of a report or comparison, after the output-path
    policy (:func:`~sparserobust.rundir.check_output`) allowed that very file."""
    atomic_write(check_output(path, own_run=own_run), write)


def write_report(
    run_dir: str | Path,
    max_accuracy_drop: float | None = None,
    out_dir: str | Path | None = None,
    seeds: Sequence[int] | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and PNG plots into ``out_dir`` (default
    ``RUN_DIR/report``), reading the database without writing to it (a read-only run
    directory works with ``out_dir`` elsewhere); returns the markdown path. A run
    that has not finished is labelled incomplete at the top. ``seeds`` restricts the
    report to those seeds (ConfigError for a seed the study does not have); a report of
    a subset of the seeds says so at the top and, without ``out_dir``, goes to
    ``RUN_DIR/report-seeds-<seeds>``, never over the full report."""
    from sparserobust import figures

    run = Path(run_dir)
    with ResultStore(run, readonly=True) as raw:
        study_seeds = sorted(json.loads(raw.get_meta("config") or "{}").get("seeds") or [])
        store: Any = raw if seeds is None else SeedView(raw, seeds)
        config_hash = store.get_meta("config_hash") or "?"
        prov = json.loads(store.get_meta("provenance") or "{}")
        data = gather(store)
        done = completeness(json.loads(store.get_meta("config") or "{}"), store)
        bad_data = data_warnings(store)
    config = data.config
    if max_accuracy_drop is None:
        max_accuracy_drop = float((config.get("report") or {}).get("max_accuracy_drop", 0.01))
    heads = headlines(data)
    subset = seeds is not None and sorted(set(seeds)) != study_seeds
    default = run / "report"
    if subset:  # never over the full report
        default = run / ("report-seeds-" + "-".join(str(s) for s in sorted(set(seeds or []))))
    out = check_output(
        out_dir if out_dir is not None else default,
        folder=True,
        own_run=run,
        what="the report folder (--out)",
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the report folder {out} ({exc.strerror}): "
            "give a writable one with --out"
        ) from None
    images: dict[str, bytes] = {}

    def image(name: str, png: bytes | None) -> str | None:
        if png is None:
            return None
        write_output(out / f"{name}.png", lambda p: p.write_bytes(png), run)
        images[name] = png
        return f"![{name}]({name}.png)"

    lines = [
        f"# sparserobust report: {config.get('name', '?')}",
        "",
        f"Does sparsity help robustness here, and which sparsity is best? Dataset "
        f"`{config.get('dataset')}`, model `{config.get('model')}`, seeds {config.get('seeds')}; "
        f"the best sparsity is chosen among pruned models whose mean clean accuracy is within "
        f"{max_accuracy_drop:.3g} of the dense model; {data.interval_note()}.",
        "",
    ]
    if subset:
        lines += [
            f"**Subset report**: seeds {sorted(set(seeds or []))} of the study's "
            f"{study_seeds}; every number and verdict below uses only those seeds. "
            "The full report is `sparserobust report RUN_DIR` (in `RUN_DIR/report/`).",
            "",
        ]
    if done[0] < done[1] or done[2] < done[3]:
        lines += [
            f"**Incomplete run**: {done[0]} of {done[1]} models and {done[2]} of {done[3]} "
            "measurements are stored; the verdict covers only those. Re-run "
            "`sparserobust run` with the same config to finish it.",
            "",
        ]
    lines += ["## Verdict", ""]
    if data.table.get(CLEAN):
        verdict, _ = verdict_section([(data, heads)], max_accuracy_drop)
        lines += verdict or ["No robustness headline is stored yet.", ""]
        lines += _ranking_section(data, heads)
        lines += ["## Overview", ""]
        lines += [image("overview", figures.overview([(data, heads)])) or "", ""]
        label = tradeoff_metric(data, heads)
        if label is not None:
            pts = tradeoff_points(data, label)
            front = [p for p in pts if p[4]]
            lines += ["## Trade-off: clean vs robust accuracy", ""]
            dense_front = mean_front(data, label) if has_front(data) else []
            lines += [
                image("tradeoff", figures.tradeoff(pts, label, front=dense_front)) or "",
                "",
            ]
            lines.append(
                "Pareto front (no other model is better in both): "
                + ", ".join(f"{p[0]} {pct(p[1])}" for p in sorted(front, key=lambda p: p[2]))
                + "."
            )
            lines.append("")
            lines += front_section(data, label)
        if data.distances:
            lines += [
                "## Security curves",
                "",
                "Robust accuracy against epsilon from the stored per-sample minimal norms "
                "(mean over seeds; one line per sparsity).",
                "",
            ]
            for source, norm in sorted(data.distances):
                name = _slug(f"security_{source}_l{norm}")
                lines += [image(name, figures.security(data, source, norm)) or ""]
            lines.append("")
    else:
        lines += ["No model is stored yet.", ""]
    lines += _bracket_section(data)
    lines += _warnings_section(data)
    if bad_data:
        lines += ["Numbers that cannot be right (a damaged or hand-edited database):", ""]
        lines += [f"- `{key}` {where}: {what}" for key, where, what in bad_data]
        lines.append("")
    diag = figures.diagnostics(data) if data.table.get(CLEAN) else None
    if diag is not None:
        lines += ["## Diagnostics", "", "Not robustness: activations, margins, gradient norms.", ""]
        lines += [image("diagnostics", diag) or "", ""]
    lines += [
        "## Details",
        "",
        f"- config hash `{config_hash}`; dataset `{config.get('dataset')}`, model "
        f"`{config.get('model')}`, seeds {config.get('seeds')}",
        f"- device `{prov.get('device')}`; sparserobust {prov.get('sparserobust')} "
        f"(commit {prov.get('git_commit')}); torch {prov.get('torch')}, numpy "
        f"{prov.get('numpy')}, scipy {prov.get('scipy')}, python {prov.get('python')}",
        f"- {SPARSITY_NOTE}",
        f"- values are means over seeds; {data.interval_note()}; norms are in [0,1] pixel space",
        "",
    ]
    lines += _details(data, image)
    md = "\n".join(lines) + "\n"
    write_output(out / "report.md", lambda p: p.write_text(md), run)
    page = _html(md, images)
    write_output(out / "report.html", lambda p: p.write_text(page), run)
    return out / "report.md"


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
                    front_text(where.get((v.method, v.best))) if has_front(data) else "no front",
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
    return ["## Summary: does sparsity help, per dataset and model", "", *_table(header, rows), ""]


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
    the same clean accuracy (:mod:`sparserobust.control`); empty without a front."""
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
    lines += _table(header, rows)
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


def _ranking_section(data: StudyData, heads: dict[str, str]) -> list[str]:
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
        lines += _table(["sparsity", *methods, "most robust", "lead over next [95%]"], body)
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


def _bracket_section(data: StudyData) -> list[str]:
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
        lines += _table([*header, "change from dense, proven", "check"], body)
        lines.append("")
    return lines


def _warnings_section(data: StudyData) -> list[str]:
    lines = ["## Evaluation warnings", ""]
    if not data.flags:
        return [*lines, "None raised.", ""]
    lines += [f"- {w}" for w in warning_summary(data)]
    lines += ["", f"<details><summary>All {len(data.flags)} warnings</summary>", ""]
    lines += [f"- `{key}` {meas}: {text}" for _, _, key, meas, text in data.flags]
    return [*lines, "", "</details>", ""]


def _details(data: StudyData, image: Any) -> list[str]:
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
        lines += _table(["method", *(pct(t) for t in targets)], rows)
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
                [m, *(_cell_text(data.table[label].get(m, {}).get(t)) for t in targets)]
                for m in methods
            ]
            lines += _table(["method", *(pct(t) for t in targets)], rows)
            lines += [image(_slug(label), _plot(label, data.table)) or "", ""]
    return lines


def write_comparison(
    run_dirs: list[str | Path], out_dir: str | Path, max_accuracy_drop: float | None = None
) -> Path:
    """Put two or more run directories side by side: ``compare.md``, ``compare.html``
    and ``overview.png`` (one colour per run) in ``out_dir``; returns the markdown path.
    Each run keeps its own headlines; the accuracy budget is each run's own unless
    ``max_accuracy_drop`` is given."""
    from sparserobust import figures

    if len(run_dirs) < 2:
        raise ConfigError("compare needs two or more run directories")
    out = check_output(out_dir, folder=True, what="the comparison folder (--out)")
    runs = []
    names: list[str] = []
    for d in run_dirs:
        data = load_study(d)
        if data.name in names:
            data.name = f"{data.name} ({Path(d).name})"
        names.append(data.name)
        runs.append((data, headlines(data)))
    drops = {float((d.config.get("report") or {}).get("max_accuracy_drop", 0.01)) for d, _ in runs}
    drop = max_accuracy_drop if max_accuracy_drop is not None else max(drops)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the comparison folder {out} ({exc.strerror}): "
            "give a writable one with --out"
        ) from None
    verdict, _ = verdict_section(runs, drop)
    lines = [
        "# sparserobust comparison",
        "",
        "Runs: "
        + "; ".join(
            f"{d.name} (`{p}`: {d.config.get('dataset')}, {d.config.get('model')}, "
            f"seeds {d.config.get('seeds')})"
            for (d, _), p in zip(runs, run_dirs, strict=True)
        ),
        "",
        f"Best sparsity within {drop:.3g} clean accuracy of each run's dense model; "
        + "; ".join(sorted({d.interval_note() for d, _ in runs}))
        + ".",
        "",
        *summary_section(runs, drop),
        "## Verdict",
        "",
        *verdict,
        "## Overview",
        "",
        "One colour per run; line style and marker per method.",
        "",
    ]
    images: dict[str, bytes] = {}
    png = figures.overview(runs, compare=True)
    if png is not None:
        write_output(out / "overview.png", lambda p: p.write_bytes(png))
        images["overview"] = png
        lines.append("![overview](overview.png)")
    md = "\n".join(lines) + "\n"
    write_output(out / "compare.md", lambda p: p.write_text(md))
    page = _html(md, images, title="sparserobust comparison")
    write_output(out / "compare.html", lambda p: p.write_text(page))
    log.info("comparison of %d runs written to %s", len(runs), out)
    return out / "compare.md"


_INLINE_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(text))


def _html(md: str, images: dict[str, bytes], title: str = "sparserobust report") -> str:
    """A self-contained page from the report's markdown: tables (first row a header),
    headings, lists, <details> blocks, with the plots inlined as base64 PNG."""
    body: list[str] = []
    in_table = in_list = False
    for line in md.splitlines():
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if in_list and not line.startswith("- "):
            body.append("</ul>")
            in_list = False
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if m and m.group(1) in images:
            data = base64.b64encode(images[m.group(1)]).decode()
            body.append(
                f'<img alt="{html.escape(m.group(1))}" class="{_slug(m.group(1)).split("_")[0]}" '
                f'src="data:image/png;base64,{data}">'
            )
        elif line.startswith(("<details>", "</details>")):
            body.append(line)
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1150px;margin:2em auto;line-height:1.35}"
        "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f2f2f2;text-align:left}"
        "img{max-width:48%;margin:4px}img.overview,img.tradeoff,img.diagnostics,"
        "img.security{max-width:100%}li{font-size:14px}summary{cursor:pointer}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<link rel='icon' href='data:,'>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
