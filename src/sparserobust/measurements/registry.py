"""Measurement registry: name -> the object that plans and runs that measurement.

Adding a measurement is one new file (a :class:`~sparserobust.measurements.base.Measurement`
subclass) plus one line in :data:`MEASUREMENTS`. A study switches a new
measurement on with ``eval.measurements: {<name>: {<its settings>}}``; the
built-in ones keep their historical config keys. The registry's order is the
order cells are planned and run in.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.measurements.activations import ActivationsMeasurement
from sparserobust.measurements.attack import AttackMeasurement
from sparserobust.measurements.base import (
    NOT_MEASURED,
    Cell,
    EvalView,
    Measurement,
    finite_logits,
)
from sparserobust.measurements.bounds import BoundsMeasurement
from sparserobust.measurements.checks import GradientCheck
from sparserobust.measurements.clever import CleverMeasurement
from sparserobust.measurements.masking import MaskingMeasurement
from sparserobust.measurements.structure import StructureMeasurement
from sparserobust.measurements.verify import VerifyMeasurement

MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        GradientCheck(),
        AttackMeasurement(),
        CleverMeasurement(),
        MaskingMeasurement(),
        ActivationsMeasurement(),
        BoundsMeasurement(),
        StructureMeasurement(),
        VerifyMeasurement(),
    )
}


def measurement_names() -> list[str]:
    """Registered measurement names, in planning order."""
    return list(MEASUREMENTS)


def get_measurement(name: str) -> Measurement:
    """The registered measurement ``name``; ConfigError naming the choices otherwise."""
    try:
        return MEASUREMENTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown measurement {name!r}: choose one of {', '.join(MEASUREMENTS)}"
        ) from None


def check_eval_settings(settings: EvalView) -> None:
    """Validate a study's eval settings: ``eval.measurements`` names registered
    measurements set there (not through a historical key), and every measurement checks
    its own settings (:meth:`Measurement.check`). ConfigError naming the key otherwise."""
    for name in settings.measurements:
        where = f"eval.measurements.{name}"
        m = MEASUREMENTS.get(name)
        if m is None:
            extra = [k for k, v in MEASUREMENTS.items() if v.config_key is None]
            raise ConfigError(
                f"{where}: unknown measurement {name!r}; choose from {', '.join(extra) or 'none'}"
            )
        if m.config_key is not None:
            raise ConfigError(f"{where}: {name} is set with {m.config_key}, not here")
    for m in MEASUREMENTS.values():
        m.check(settings)


def plan_cells(settings: EvalView, seed: int) -> list[Cell]:
    """Every cell the eval settings switch on, for one model of seed ``seed``."""
    cells: list[Cell] = []
    for m in MEASUREMENTS.values():
        for configured in m.configured(settings):
            cells += m.cells(configured, settings, seed)
    return cells


def run_cell(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cell: Cell, batch_size: int = 500
) -> dict[str, Any]:
    """Run ``cell`` on ``model`` with the first ``cell.params["n"]`` of ``x``/``y``.

    A model with NaN or inf logits on the clean images (it diverged) gets an empty,
    flagged result (``not_measured``) instead of numbers."""
    n = int(cell.params.get("n", len(y)))
    xs, ys = x[:n], y[:n]
    if not finite_logits(model, xs, batch_size):
        return {"records": [], "not_measured": True, "flags": [NOT_MEASURED]}
    return get_measurement(cell.measurement).run(model, xs, ys, cell, batch_size)


def timed_run_cell(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cell: Cell, batch_size: int = 500
) -> tuple[dict[str, Any], float]:
    """:func:`run_cell` and its wall time in seconds."""
    start = time.perf_counter()
    out = run_cell(model, x, y, cell, batch_size)
    return out, time.perf_counter() - start
