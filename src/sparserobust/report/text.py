"""How the report writes numbers and markdown: sparsities as percentages, values,
intervals, table rows, file names.
"""

from __future__ import annotations

import math
import re

from sparserobust.report.study import Cell


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


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def cell_text(cell: Cell | None) -> str:
    """A cell as ``mean [low, high]`` (the interval only where there is one)."""
    if cell is None:
        return ""
    if cell.n > 1 or cell.kind == "bootstrap":
        return f"{_fmt(cell.mean)}{span(cell.low, cell.high)}"
    return _fmt(cell.mean)


def slug(text: str) -> str:
    """``text`` as a file name: runs of other characters than letters, digits, ``_.-``
    become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (``|`` inside a cell becomes ``/``) and a blank line."""
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def fmt(v: float, digits: int = 3) -> str:
    """A number of the reproduction tables (``digits`` significant digits; ``-`` for NaN)."""
    if not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"


def table_cell(c: Cell | None, seeds: int = 0) -> str:
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


__all__ = ["cell_text", "md_table", "num", "pct", "slug", "span", "table_cell", "fmt"]
