"""Paper-reproduction tables and plots from a finished study's run directory.

    python scripts/reproduction_tables.py RUN_DIR [RUN_DIR ...] OUT_DIR [--metric NAME ...]

Reads ``RUN_DIR/results.sqlite`` (written by ``sparserobust run``; several run
directories of one config that differ only in their seeds are merged) and writes
``tables.md`` and plots into ``OUT_DIR``: see :mod:`sparserobust.report.tables`
(:func:`~sparserobust.report.write_tables`) for what they hold.

``--seed N`` (repeatable) reads only those seeds' models, e.g. while a study is running.

Every number in ``docs/reproduction.md`` comes from these files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparserobust.errors import SparseRobustError
from sparserobust.report import write_tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
        path = write_tables(args.run_dirs, args.out_dir, args.metric, args.plot or (), args.seed)
    except SparseRobustError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
