"""Write the report of a run directory, or a comparison of several.

Writes ``report.md`` and a self-contained ``report.html`` (plots embedded as base64
PNG, opens offline) plus the PNGs into ``RUN_DIR/report/``. The page opens with one
verdict table per norm (l_inf, l2) built from that norm's headline metric
(``report.headline_linf``/``headline_l2``, defaults in :mod:`sparserobust.report.verdicts`),
one generated sentence per method, then the overview figure (small multiples against
sparsity), the clean-vs-robust trade-off with its Pareto front, security curves from
stored per-sample minimal norms, the warnings (one line per method and kind, the full
list folded), the diagnostics figure and, grouped by norm and metric, every number
with its plot. :func:`write_comparison` puts several run directories side by side
(``sparserobust compare``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparserobust.errors import ConfigError, SparseRobustError, StoreError
from sparserobust.plausible import implausible
from sparserobust.pruning.masks import SPARSITY_NOTE
from sparserobust.report.figures import diagnostics, overview, security, tradeoff
from sparserobust.report.front import has_front, mean_front
from sparserobust.report.html import html_page
from sparserobust.report.reader import RunReader, StoredResults
from sparserobust.report.sections import (
    bracket_section,
    details_section,
    front_section,
    ranking_section,
    summary_section,
    verdict_section,
    warnings_section,
)
from sparserobust.report.study import CLEAN, gather, load_study
from sparserobust.report.text import pct, slug
from sparserobust.report.verdicts import headlines, tradeoff_metric, tradeoff_points
from sparserobust.rundir import check_output
from sparserobust.store import params_hash
from sparserobust.utils import atomic_write

log = logging.getLogger(__name__)


def completeness(config: dict[str, Any], store: StoredResults) -> tuple[int, int, int, int]:
    """(models stored, models planned, results stored, results planned) of the study
    ``config`` (its stored dict), against the keys it plans
    (:func:`~sparserobust.engine.plan.planned_keys`); planned counts are 0 when the
    config cannot be read. ``store`` needs ``models()`` and ``results()``."""
    from sparserobust.config import config_from_dict
    from sparserobust.engine.plan import planned_keys

    models = {m.model_key for m in store.models()}
    results = {
        (r["model_key"], r["measurement"], params_hash(r["params"])) for r in store.results()
    }
    try:
        planned = planned_keys(config_from_dict(config))
    except SparseRobustError:
        return len(models), 0, len(results), 0
    return (
        len(models & planned.models),
        len(planned.models),
        len(results & planned.results),
        len(planned.results),
    )


def data_warnings(store: StoredResults) -> list[tuple[str, str, str]]:
    """Stored numbers that cannot be right (:mod:`sparserobust.plausible`): (model key,
    measurement, what is wrong); a damaged or hand-edited database."""
    return [
        (x.model_key, x.measurement, x.what) for x in implausible(store.models(), store.results())
    ]


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
    run = Path(run_dir)
    with RunReader(run, seeds) as store:
        study_seeds = store.study_seeds
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
        lines += ranking_section(data, heads)
        lines += ["## Overview", ""]
        lines += [image("overview", overview([(data, heads)])) or "", ""]
        label = tradeoff_metric(data, heads)
        if label is not None:
            pts = tradeoff_points(data, label)
            front = [p for p in pts if p[4]]
            lines += ["## Trade-off: clean vs robust accuracy", ""]
            dense_front = mean_front(data, label) if has_front(data) else []
            lines += [
                image("tradeoff", tradeoff(pts, label, front=dense_front)) or "",
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
                name = slug(f"security_{source}_l{norm}")
                lines += [image(name, security(data, source, norm)) or ""]
            lines.append("")
    else:
        lines += ["No model is stored yet.", ""]
    lines += bracket_section(data)
    lines += warnings_section(data)
    if bad_data:
        lines += ["Numbers that cannot be right (a damaged or hand-edited database):", ""]
        lines += [f"- `{key}` {where}: {what}" for key, where, what in bad_data]
        lines.append("")
    diag = diagnostics(data) if data.table.get(CLEAN) else None
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
    lines += details_section(data, image)
    md = "\n".join(lines) + "\n"
    write_output(out / "report.md", lambda p: p.write_text(md), run)
    page = html_page(md, images)
    write_output(out / "report.html", lambda p: p.write_text(page), run)
    return out / "report.md"


def write_comparison(
    run_dirs: list[str | Path], out_dir: str | Path, max_accuracy_drop: float | None = None
) -> Path:
    """Put two or more run directories side by side: ``compare.md``, ``compare.html``
    and ``overview.png`` (one colour per run) in ``out_dir``; returns the markdown path.
    Each run keeps its own headlines; the accuracy budget is each run's own unless
    ``max_accuracy_drop`` is given."""
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
    png = overview(runs, compare=True)
    if png is not None:
        write_output(out / "overview.png", lambda p: p.write_bytes(png))
        images["overview"] = png
        lines.append("![overview](overview.png)")
    md = "\n".join(lines) + "\n"
    write_output(out / "compare.md", lambda p: p.write_text(md))
    page = html_page(md, images, title="sparserobust comparison")
    write_output(out / "compare.html", lambda p: p.write_text(page))
    log.info("comparison of %d runs written to %s", len(runs), out)
    return out / "compare.md"


__all__ = ["completeness", "data_warnings", "write_comparison", "write_output", "write_report"]
