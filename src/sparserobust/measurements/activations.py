"""Active ReLUs: the fraction of ReLU units that fire on clean test images."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import NoSettings


class ActivationsMeasurement(Measurement):
    """Fraction of active ReLUs overall and per layer, and dead units, on the first
    ``eval.n`` test images (``eval.activations: true``)."""

    name = "activations"
    description = "fraction of active ReLUs (a diagnostic, not robustness)"
    config_key = "eval.activations"

    def configured(self, settings: EvalView) -> list[NoSettings]:
        return [NoSettings()] if settings.activations else []

    def cells(self, settings: NoSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
        return [Cell(self.name, "activations", {"n": eval_settings.n})]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        from sparserobust.metrics import active_relu_fraction

        act = active_relu_fraction(model, x, batch_size=batch_size)
        records = []
        if act.has_relu:
            records.append(
                Record(
                    "active_relu_fraction (not robustness)",
                    act.overall,
                    "active_relu_fraction",
                    self.name,
                    robustness=False,
                    higher_is_better=None,
                )
            )
        return numbers(
            records, summary=act.summary(), layers=act.layers, dead=act.dead, message=act.message
        )
