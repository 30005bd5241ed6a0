"""CLEVER scores (Weng et al. 2018): an extreme-value estimate of the minimal norm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, Measurement, Record, numbers

if TYPE_CHECKING:
    from sparserobust.config import CleverSettings, EvalSettings


class CleverMeasurement(Measurement):
    """CLEVER scores of the first ``eval.clever.n`` images in each of
    ``eval.clever.norms`` (an estimate, not a bound; off when n is 0)."""

    name = "clever"
    description = "CLEVER scores (an estimate of the minimal l2 / l_inf norm)"
    config_key = "eval.clever"

    def configured(self, settings: EvalSettings) -> list[CleverSettings]:
        return [settings.clever] if settings.clever.n > 0 else []

    def cells(self, settings: CleverSettings, eval_settings: EvalSettings, seed: int) -> list[Cell]:
        params = {
            "n": settings.n,
            "n_batches": settings.n_batches,
            "batch_size": settings.batch_size,
            "radius": settings.radius,
            "seed": seed,
        }
        return [
            Cell(self.name, f"clever:l{norm}", dict(params), {"norm": norm})
            for norm in settings.norms
        ]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        from sparserobust.metrics import clever_scores

        params, norm = cell.params, str(cell.args["norm"])
        res = clever_scores(
            model,
            x,
            norm=norm,
            radius=params.get("radius"),
            n_batches=params["n_batches"],
            batch_size=params["batch_size"],
            seed=int(params["seed"]),
        )
        s = res.summary()
        records = [
            Record(f"clever_l{norm} mean", s["clever_mean"], "clever_mean", self.name, norm),
            Record(f"clever_l{norm} median", s["clever_median"], "clever_median", self.name, norm),
        ]
        return numbers(records, summary=s, scores=res.scores.tolist())
