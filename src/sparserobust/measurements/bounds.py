"""Local margin bounds (Hein & Andriushchenko 2017): margin over gradient-norm ratio."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import NoSettings


class BoundsMeasurement(Measurement):
    """Per point: the margin f_c - f_j, the dual-norm gradient difference and their
    ratio (a first-order estimate of the minimal perturbation), in l2 and l_inf, on
    the first ``eval.n`` test images (``eval.bounds: true``)."""

    name = "bounds"
    description = "local margin / gradient-norm bounds in l2 and l_inf"
    config_key = "eval.bounds"

    def configured(self, settings: EvalView) -> list[NoSettings]:
        return [NoSettings()] if settings.bounds else []

    def cells(self, settings: NoSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
        return [
            Cell(self.name, f"bounds:l{norm}", {"n": eval_settings.n}, {"norm": norm})
            for norm in ("2", "inf")
        ]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        from sparserobust.metrics import local_bounds

        norm = str(cell.args["norm"])
        s = local_bounds(model, x, y, norm=norm).summary()
        tag = f"bound_l{norm}"
        records = [
            Record(
                f"{tag} ratio median",
                s.get("ratio_median", math.nan),
                "ratio_median",
                "bounds",
                norm,
            ),
            Record(
                f"{tag} margin median (not robustness)",
                s.get("margin_median", math.nan),
                "margin_median",
                "bounds",
                norm,
                robustness=False,
                higher_is_better=True,
            ),
            Record(
                f"{tag} grad norm median (not robustness)",
                s.get("grad_norm_median", math.nan),
                "grad_norm_median",
                "bounds",
                norm,
                robustness=False,
                higher_is_better=False,
            ),
        ]
        return numbers(records, summary=s)
