"""The gradient check: the share of points with vanishing input gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import NoSettings


class GradientCheck(Measurement):
    """Share of the first ``eval.n`` points whose cross-entropy input gradient
    vanishes (l1 <= 1e-10), flagged above 10%: always on."""

    name = "checks"
    description = "vanishing-gradient check (always on)"
    config_key = "always on"

    def configured(self, settings: EvalView) -> list[NoSettings]:
        return [NoSettings()]

    def cells(self, settings: NoSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
        return [Cell(self.name, "checks", {"n": eval_settings.n})]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        from sparserobust.metrics.checks import gradient_check

        check = gradient_check(model, x, y, batch_size)
        share = check.pop("vanishing_share")
        record = Record(
            "vanishing gradient share (not robustness)",
            share,
            "vanishing_gradient_share",
            self.name,
            robustness=False,
            higher_is_better=False,
        )
        return numbers([record], check.pop("flags", []), vanishing_share=share, **check)
