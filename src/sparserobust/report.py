"""Report: robustness-vs-sparsity plots, tables and sweet spots from a results store.

Writes ``report.md`` and a self-contained ``report.html`` (plots embedded as
base64 PNG) plus one PNG per metric into ``RUN_DIR/report/``. Every plot shows
one line per pruning method, mean over seeds with a 95% t-interval band, and
clean accuracy alongside. The sweet spot of a method and metric is the sparsity
with the best (highest) mean robustness among models whose mean clean accuracy
is within ``max_accuracy_drop`` of the dense model.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparserobust.errors import StoreError
from sparserobust.measurements import Record, records_of
from sparserobust.pruning.masks import SPARSITY_NOTE
from sparserobust.store import ResultStore
from sparserobust.utils import atomic_write

CLEAN = "clean_accuracy"


@dataclass
class Cell:
    """Mean and 95% interval of one metric at one (method, sparsity), over seeds."""

    mean: float
    low: float
    high: float
    n: int
    sparsity: float


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t interval (the mean itself for one value)."""
    from scipy import stats

    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def collect(store: ResultStore) -> tuple[dict[str, dict[str, dict[float, Cell]]], list[str]]:
    """``table[metric][method][target_sparsity] -> Cell`` with clean accuracy included,
    and the sorted list of metric labels (the stored records' labels). Dense models
    (sparsity 0) appear under every method so each curve starts at the dense model."""
    raw: dict[str, dict[str, dict[float, list[tuple[float, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    models = store.models()
    methods = sorted({m.method for m in models if m.method != "dense"}) or ["dense"]

    def add(metric: str, method: str, target: float, value: float, sparsity: float) -> None:
        targets = methods if method == "dense" else [method]
        for meth in targets:
            raw[metric][meth][target].append((value, sparsity))

    for m in models:
        add(CLEAN, m.method, m.target_sparsity, m.accuracy, m.sparsity)
    for r in store.results():
        for rec in records_of(r["numbers"]):
            add(rec.label, r["method"], r["target_sparsity"], rec.value, r["sparsity"])
    table: dict[str, dict[str, dict[float, Cell]]] = {}
    for metric, per_method in raw.items():
        table[metric] = {}
        for method, per_target in per_method.items():
            table[metric][method] = {}
            for target, pairs in sorted(per_target.items()):
                mean, lo, hi = interval([p[0] for p in pairs])
                sp = sum(p[1] for p in pairs) / len(pairs)
                table[metric][method][target] = Cell(mean, lo, hi, len(pairs), sp)
    headline = sorted(k for k in table if k != CLEAN)
    return table, headline


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=90)
    ax2 = ax.twinx() if metric != CLEAN else None
    for i, (method, cells) in enumerate(sorted(table[metric].items())):
        color = f"C{i}"
        xs = sorted(cells)
        # x axis: fraction of weights kept, log scale, so 0.99 and 0.998 separate
        kept = [max(1 - x, 1e-4) for x in xs]
        means = [cells[x].mean for x in xs]
        ax.plot(kept, means, marker="o", ms=3, color=color, label=method)
        ax.fill_between(
            kept, [cells[x].low for x in xs], [cells[x].high for x in xs], color=color, alpha=0.2
        )
        if ax2 is not None and method in table[CLEAN]:
            clean = table[CLEAN][method]
            cx = sorted(clean)
            ax2.plot(
                [max(1 - x, 1e-4) for x in cx],
                [clean[x].mean for x in cx],
                ls=":",
                color=color,
                alpha=0.7,
            )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("fraction of weights kept (log; sparsity grows to the right)")
    ax.set_ylabel(metric)
    if ax2 is not None:
        ax2.set_ylabel("clean accuracy (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(metric, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.n > 1:
        return f"{_fmt(cell.mean)} [{_fmt(cell.low)}, {_fmt(cell.high)}]"
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
            model_key(seed, m, t) for m in study.pruning.methods for t in study.pruning.sparsities
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
    """Stored numbers that cannot be right (a fraction outside [0,1], a sparsity that
    disagrees with its counts): a damaged or hand-edited database."""
    out: list[tuple[str, str, str]] = []
    for m in store.models():
        if not 0.0 <= m.accuracy <= 1.0:
            out.append((m.model_key, "models", f"clean accuracy {m.accuracy} is outside [0,1]"))
        if m.total_weights <= 0 or abs(m.sparsity - m.pruned_weights / m.total_weights) > 1e-6:
            out.append(
                (m.model_key, "models", f"sparsity {m.sparsity} disagrees with its weight counts")
            )
    for r in store.results():
        for rec in records_of(r["numbers"]):
            if rec.metric in FRACTION_METRICS and not (
                math.isnan(rec.value) or 0.0 <= rec.value <= 1.0
            ):
                out.append(
                    (
                        r["model_key"],
                        r["measurement"],
                        f"{rec.label} = {rec.value} not in [0,1]",
                    )
                )
    return out


FRACTION_METRICS = ("robust_accuracy", "active_relu_fraction", "vanishing_share")
"""Record metrics that are fractions in [0,1]."""


def write_report(
    run_dir: str | Path,
    max_accuracy_drop: float | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and PNG plots into ``out_dir`` (default
    ``RUN_DIR/report``), reading the database without writing to it (a read-only run
    directory works with ``out_dir`` elsewhere); returns the markdown path. A run
    that has not finished is labelled incomplete at the top."""
    run = Path(run_dir)
    with ResultStore(run, readonly=True) as store:
        config = json.loads(store.get_meta("config") or "{}")
        config_hash = store.get_meta("config_hash") or "?"
        prov = json.loads(store.get_meta("provenance") or "{}")
        flags = store.results()
        table, metrics = collect(store)
        info = metric_info(store)
        models = store.models()
        done = completeness(config, store)
        bad_data = data_warnings(store)
    if max_accuracy_drop is None:
        max_accuracy_drop = float(config.get("report", {}).get("max_accuracy_drop", 0.01))
    out = Path(out_dir) if out_dir is not None else run / "report"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise StoreError(f"{out} exists and is not a folder: move it away and re-run the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the report folder {out} ({exc.strerror}): "
            "give a writable one with --out"
        ) from None
    images: dict[str, bytes] = {}
    if models:
        for metric in [CLEAN, *metrics]:
            png = _plot(metric, table)
            name = f"{_slug(metric)}.png"
            atomic_write(out / name, lambda p, data=png: p.write_bytes(data))  # type: ignore[misc]
            images[metric] = png
    spots = sweet_spots(table, robustness_metrics(metrics, info), max_accuracy_drop)
    warnings = [
        (r["model_key"], r["measurement"], w) for r in flags for w in r["numbers"].get("flags", [])
    ]
    warnings += bad_data
    md = _markdown(config, config_hash, prov, table, metrics, spots, warnings, max_accuracy_drop)
    if done[0] < done[1] or done[2] < done[3]:
        note = (
            f"**Incomplete run**: {done[0]} of {done[1]} models and {done[2]} of {done[3]} "
            "measurements are stored; sweet spots and tables cover only those. Re-run "
            "`sparserobust run` with the same config to finish it."
        )
        head, _, rest = md.partition("\n")
        md = f"{head}\n\n{note}\n{rest}"
    atomic_write(out / "report.md", lambda p: p.write_text(md))
    page = _html(md, images)
    atomic_write(out / "report.html", lambda p: p.write_text(page))
    return out / "report.md"


def _markdown(
    config: dict[str, Any],
    config_hash: str,
    prov: dict[str, Any],
    table: dict[str, dict[str, dict[float, Cell]]],
    metrics: list[str],
    spots: list[dict[str, Any]],
    warnings: list[tuple[str, str, str]],
    max_drop: float,
) -> str:
    lines = [
        f"# sparserobust report: {config.get('name', '?')}",
        "",
        f"- config hash `{config_hash}`; dataset `{config.get('dataset')}`, model "
        f"`{config.get('model')}`, seeds {config.get('seeds')}",
        f"- device `{prov.get('device')}`; sparserobust {prov.get('sparserobust')} "
        f"(commit {prov.get('git_commit')}); torch {prov.get('torch')}, numpy "
        f"{prov.get('numpy')}, scipy {prov.get('scipy')}, python {prov.get('python')}",
        f"- {SPARSITY_NOTE}",
        "- values are means over seeds with a 95% Student-t interval in brackets when "
        "there is more than one seed; norms are in [0,1] pixel space",
        "",
        "## Sweet spots",
        "",
        f"Best mean robustness among models within {max_drop:.3g} clean accuracy of the "
        "dense model.",
        "",
        "| metric | method | sparsity | value | dense value | clean accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in spots:
        lines.append(
            f"| {s['metric']} | {s['method']} | {s['sparsity']:.4g} | {_fmt(s['value'])} | "
            f"{_fmt(s['dense_value'])} | {_fmt(s['clean_accuracy'])} |"
        )
    lines += ["", "## Evaluation warnings", ""]
    if warnings:
        lines += [f"- `{k}` {m}: {w}" for k, m, w in warnings]
    else:
        lines.append("None raised.")
    lines += ["", "## Plots", ""]
    for metric in [CLEAN, *metrics]:
        if metric in table:
            lines.append(f"![{metric}]({_slug(metric)}.png)")
    lines += ["", "## All numbers", ""]
    for method in sorted(table.get(CLEAN, {})):
        targets = sorted(table[CLEAN][method])
        lines += [f"### {method}", ""]
        header = ["metric", *(f"{t:.4g}" for t in targets)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join("---" for _ in header) + " |")
        measured = [
            "measured sparsity",
            *(f"{table[CLEAN][method][t].sparsity:.4f}" for t in targets),
        ]
        lines.append("| " + " | ".join(measured) + " |")
        for metric in [CLEAN, *metrics]:
            cells = table.get(metric, {}).get(method, {})
            row = [metric, *(_cell_text(cells.get(t)) for t in targets)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _html(md: str, images: dict[str, bytes]) -> str:
    """A self-contained page: the markdown's tables and text, with plots inlined."""
    body: list[str] = []
    in_table = False
    for line in md.splitlines():
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if m and m.group(1) in images:
            data = base64.b64encode(images[m.group(1)]).decode()
            body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:12px}td{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:48%;margin:4px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>sparserobust report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
