"""The report: study data and intervals, verdicts, brackets, figures, markdown, HTML and
the reproduction tables, from the results of a run directory.

- :mod:`.reader`: :class:`RunReader`, the one read-only reader of stored results;
- :mod:`.study`: a store read into cells (mean over seeds, 95% interval) and paired
  differences;
- :mod:`.verdicts`: headlines, verdicts, method rankings, the Pareto front, warnings;
- :mod:`.brackets`: certified <= exact <= attacked, and sound bounds on changes;
- :mod:`.front`: positions against the dense control front;
- :mod:`.figures`: the plots as PNG bytes;
- :mod:`.text`, :mod:`.sections`, :mod:`.html`: markdown and the HTML page;
- :mod:`.write`: :func:`write_report` and :func:`write_comparison`;
- :mod:`.tables`, :mod:`.verify_tables`: the reproduction tables (:func:`write_tables`).
"""

from sparserobust.report.reader import RunReader
from sparserobust.report.study import (
    CLEAN,
    Cell,
    StudyData,
    collect,
    gather,
    interval,
    load_study,
    metric_info,
    robustness_metrics,
    sweet_spots,
)
from sparserobust.report.tables import write_tables
from sparserobust.report.write import completeness, write_comparison, write_report

__all__ = [
    "CLEAN",
    "Cell",
    "RunReader",
    "StudyData",
    "collect",
    "completeness",
    "gather",
    "interval",
    "load_study",
    "metric_info",
    "robustness_metrics",
    "sweet_spots",
    "write_comparison",
    "write_report",
    "write_tables",
]
