"""The report's figures as PNG bytes: overview small multiples, diagnostics, trade-off
front, security curves and one plot per metric.

Sparsity runs along the x axis as the fraction of weights kept, on a log scale and
inverted (dense on the left, 99% sparsity to the right), so 0.99 and 0.998 separate.
Lines are means over seeds; bands are the cells' 95% intervals; dots are single seeds
when there are fewer than three.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparserobust.report.study import CLEAN, NORMS, Cell, StudyData
from sparserobust.report.text import pct
from sparserobust.report.verdicts import exact_metrics, security_curve

MARKERS = "osD^vP*X"
LINESTYLES = ["-", "--", "-.", ":"]


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """A figure and its axes (as ``pyplot.subplots``) without pyplot: no backend is
    chosen and no figure is kept, so the plots of a notebook that runs a study are
    left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _kept(x: float) -> float:
    return max(1 - x, 1e-4)


def _sparsity_axis(ax: Any, label: bool = True) -> None:
    ax.set_xscale("log")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ticks = [1.0, 0.5, 0.1, 0.03, 0.01]
    ax.set_xticks(ticks)
    ax.set_xticklabels([pct(1 - t) for t in ticks], fontsize=7)
    ax.minorticks_off()
    if label:
        ax.set_xlabel("sparsity (log of weights kept)", fontsize=8)
    ax.grid(alpha=0.3)


def draw_cells(ax: Any, cells: dict[float, Cell], color: str, label: str, **style: Any) -> None:
    """One method's line (mean), band (95% interval) and per-seed dots."""
    xs = sorted(x for x in cells if math.isfinite(cells[x].mean))
    if not xs:
        return
    kept = [_kept(x) for x in xs]
    ax.plot(kept, [cells[x].mean for x in xs], color=color, label=label, ms=3, **style)
    lows = [cells[x].low for x in xs]
    if any(math.isfinite(v) for v in lows):
        ax.fill_between(kept, lows, [cells[x].high for x in xs], color=color, alpha=0.15, lw=0)
    for x in xs:
        if cells[x].n < 3 and len(cells[x].values) > 1:
            ax.scatter([_kept(x)] * len(cells[x].values), cells[x].values, s=6, color=color)


def overview(
    runs: Sequence[tuple[StudyData, dict[str, str]]], compare: bool = False
) -> bytes | None:
    """Small multiples against sparsity: clean accuracy, the l_inf headline, the l2
    headline and every certified/exact metric. ``runs`` pairs each study with its
    headlines ``{norm: label}``. One colour per method, or per run when ``compare``
    (methods then differ by line style)."""
    roles: list[tuple[str, str]] = [("clean accuracy", "clean")]
    if any("inf" in h for _, h in runs):
        roles.append((f"{NORMS['inf']} headline", "inf"))
    if any("2" in h for _, h in runs):
        roles.append((f"{NORMS['2']} headline", "2"))
    for exact in sorted({m for d, _ in runs for m in exact_metrics(d)}):
        roles.append((exact, f"exact:{exact}"))
    if not any(CLEAN in d.table for d, _ in runs):
        return None
    cols = min(len(roles), 4)
    rows = math.ceil(len(roles) / cols)
    fig, axes = subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), dpi=90, squeeze=False)
    for ax in list(axes.flat)[len(roles) :]:
        ax.set_visible(False)
    methods = sorted({m for d, _ in runs for m in d.table.get(CLEAN, {})})
    for ax, (title, role) in zip(axes.flat, roles, strict=False):
        shown: set[str] = set()
        for r, (data, heads) in enumerate(runs):
            if role == "clean":
                label: str | None = CLEAN
            elif role.startswith("exact:"):
                label = role[6:]
            else:
                label = heads.get(role)
            if label is None or label not in data.table:
                continue
            shown.add(label)
            for i, method in enumerate(sorted(data.table[label])):
                j = methods.index(method) if method in methods else i
                color = f"C{r}" if compare else f"C{j}"
                name = f"{data.name}: {method}" if compare else method
                draw_cells(
                    ax,
                    data.table[label][method],
                    color,
                    name,
                    ls=LINESTYLES[j % len(LINESTYLES)] if compare else "-",
                    marker=MARKERS[j % len(MARKERS)],
                )
        sub = "" if role == "clean" else "\n" + " / ".join(sorted(shown))
        ax.set_title(f"{title}{sub}", fontsize=8)
        _sparsity_axis(ax)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def diagnostics(data: StudyData) -> bytes | None:
    """Small multiples of the diagnostic metrics (not robustness) against sparsity."""
    labels = [k for k in data.metrics if not data.info[k].robustness]
    if not labels:
        return None
    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), dpi=80, squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        for i, (method, cells) in enumerate(sorted(data.table[label].items())):
            draw_cells(ax, cells, f"C{i}", method, marker=MARKERS[i % len(MARKERS)])
        ax.set_title(label.replace(" (not robustness)", ""), fontsize=8)
        _sparsity_axis(ax, label=False)
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def tradeoff(
    points: Sequence[tuple[str, float, float, float, bool]],
    label: str,
    zoom: float = 0.05,
    front: Sequence[tuple[str, float, float]] = (),
) -> bytes:
    """Clean accuracy (x) against robust accuracy ``label`` (y), one point per model kind
    labelled with its sparsity; the Pareto front is ringed and joined. ``front`` (id,
    clean, robust; :func:`sparserobust.report.front.mean_front`) is the dense control front,
    drawn as a dashed line. When some models lose more than ``zoom`` clean accuracy, a
    second panel shows only those within it."""
    top = max((p[2] for p in points if math.isfinite(p[2])), default=1.0)
    near = [p for p in points if p[2] >= top - zoom]
    panels = [points, near] if 1 < len(near) < len(points) else [points]
    fig, axes = subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), dpi=90, squeeze=False)
    methods = sorted({p[0] for p in points} - {"dense"})
    for k, (ax, shown) in enumerate(zip(axes[0], panels, strict=True)):
        for i, method in enumerate(["dense", *methods]):
            pts = [p for p in shown if p[0] == method]
            color = "black" if method == "dense" else f"C{i - 1}"
            ax.scatter([p[2] for p in pts], [p[3] for p in pts], s=18, color=color, label=method)
            for p in pts:
                ax.annotate(
                    pct(p[1]), (p[2], p[3]), fontsize=6, xytext=(3, 2), textcoords="offset points"
                )
        if len(front) > 1:
            ax.plot(
                [p[1] for p in front],
                [p[2] for p in front],
                color="black",
                ls="--",
                marker="s",
                ms=3,
                lw=1,
                label="dense control front",
            )
        pareto = sorted((p for p in shown if p[4]), key=lambda p: p[2])
        if pareto:
            ax.plot([p[2] for p in pareto], [p[3] for p in pareto], color="grey", lw=1, zorder=0)
            ax.scatter(
                [p[2] for p in pareto],
                [p[3] for p in pareto],
                s=90,
                facecolors="none",
                edgecolors="red",
                label="Pareto front",
            )
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(
            "all models" if k == 0 else f"zoom: within {zoom:g} of the best clean accuracy",
            fontsize=9,
        )
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"trade-off: clean accuracy vs {label}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def security(data: StudyData, source: str, norm: str) -> bytes:
    """Robust accuracy against epsilon from stored per-sample minimal norms: one panel
    per method, one line per sparsity (darker = sparser)."""
    per_method = data.distances[(source, norm)]
    finite = np.concatenate(
        [d[np.isfinite(d)] for cells in per_method.values() for ds in cells.values() for d in ds]
    )
    top = float(np.quantile(finite, 0.98)) * 1.1 if finite.size else 1.0
    eps = np.linspace(0, max(top, 1e-6), 120)
    methods = sorted(per_method)
    fig, axes = subplots(1, len(methods), figsize=(3.6 * len(methods), 3.0), dpi=90, squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for ax, method in zip(axes[0], methods, strict=True):
        targets = sorted(per_method[method])
        for k, target in enumerate(targets):
            color = cmap(k / max(len(targets) - 1, 1))
            ax.plot(
                eps, security_curve(per_method[method][target], eps), color=color, label=pct(target)
            )
        ax.set_title(f"{method}: {source} {NORMS.get(norm, norm)}", fontsize=8)
        ax.set_xlabel(f"epsilon ({NORMS.get(norm, norm)}, [0,1] pixels)", fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("robust accuracy")
    axes[0][-1].legend(fontsize=6, title="sparsity", title_fontsize=6)
    fig.tight_layout()
    return _png(fig)


def metric_plot(label: str, table: dict[str, dict[str, dict[float, Cell]]]) -> bytes:
    """One metric against sparsity, one line per method, clean accuracy dotted on a
    second axis."""
    fig, ax = subplots(figsize=(6.0, 3.6), dpi=90)
    ax2 = ax.twinx() if label != CLEAN else None
    for i, (method, cells) in enumerate(sorted(table[label].items())):
        draw_cells(ax, cells, f"C{i}", method, marker="o")
        if ax2 is not None and method in table.get(CLEAN, {}):
            clean = table[CLEAN][method]
            cx = sorted(clean)
            ax2.plot([_kept(x) for x in cx], [clean[x].mean for x in cx], ls=":", color=f"C{i}")
    _sparsity_axis(ax)
    ax.set_ylabel(label, fontsize=8)
    if ax2 is not None:
        ax2.set_ylabel("clean accuracy (dotted)", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return _png(fig)
