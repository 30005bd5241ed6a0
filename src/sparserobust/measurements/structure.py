"""Structure: removed neurons/channels and the cost of the equivalent compact model."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import NoSettings


class StructureMeasurement(Measurement):
    """Weight sparsity, the share of neurons (Linear) and channels (Conv) removed, and
    the parameters and FLOPs (2 x multiply-adds, one input) of the physically smaller
    model that computes the same logits (``sparserobust compact``). Switched on with
    ``eval.measurements: {structure: {}}``; diagnostics, not robustness."""

    name = "structure"
    description = "removed neurons/channels, parameters and FLOPs of the compact model"
    settings_type = NoSettings

    def cells(self, settings: NoSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
        return [Cell(self.name, "structure", {})]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        from sparserobust.pruning.structured import structured_report

        rep = structured_report(model, list(x.shape[1:])).as_dict()

        def diag(label: str, value: Any, metric: str) -> Record:
            v = math.nan if value is None else float(value)
            return Record(label, v, metric, self.name, robustness=False, higher_is_better=None)

        records = [
            diag(
                "units removed share (not robustness)",
                rep["units_removed_share"],
                "units_removed_share",
            ),
            diag("compact params (not robustness)", rep.get("params_compact"), "params_compact"),
            diag("compact FLOPs (not robustness)", rep.get("flops_compact"), "flops_compact"),
        ]
        return numbers(records, structure=rep)
