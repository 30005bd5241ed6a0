"""Measurements: the registry of what a study measures on every model.

Each measurement plans cells from a study's eval settings and runs one cell on a
model and images, returning typed :class:`Record` s (see :mod:`.base`).
"""

from typing import Any

from sparserobust.deprecation import renamed_attribute
from sparserobust.measurements.base import (
    Measurement,
    MeasurementCell,
    NoSettings,
    Record,
    records_of,
    values_of,
)
from sparserobust.measurements.registry import (
    MEASUREMENTS,
    get_measurement,
    measurement_names,
    plan_cells,
    run_cell,
    timed_run_cell,
)

__all__ = [
    "MEASUREMENTS",
    "MeasurementCell",
    "Measurement",
    "NoSettings",
    "Record",
    "get_measurement",
    "measurement_names",
    "plan_cells",
    "records_of",
    "run_cell",
    "timed_run_cell",
    "values_of",
]


_RENAMED = {"Cell": "MeasurementCell"}
"""Old names of renamed classes (old -> new), importable with a DeprecationWarning."""


def __getattr__(name: str) -> Any:
    return renamed_attribute(__name__, globals(), _RENAMED, name)
