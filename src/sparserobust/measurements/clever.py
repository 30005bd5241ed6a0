"""CLEVER scores (Weng et al. 2018): an extreme-value estimate of the minimal norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import MAX_COUNT, MAX_EPS, check_positive


@dataclass(frozen=True)
class CleverSettings:
    """CLEVER scores on the first ``n`` test images (0 turns CLEVER off)."""

    n: int = 0
    norms: tuple[str, ...] = ("2", "inf")
    n_batches: int = 20
    batch_size: int = 50
    radius: float | None = None


class CleverMeasurement(Measurement):
    """CLEVER scores of the first ``eval.clever.n`` images in each of
    ``eval.clever.norms`` (an estimate, not a bound; off when n is 0)."""

    name = "clever"
    description = "CLEVER scores (an estimate of the minimal l2 / l_inf norm)"
    config_key = "eval.clever"

    def configured(self, settings: EvalView) -> list[CleverSettings]:
        return [settings.clever] if settings.clever.n > 0 else []

    def where(self, index: int) -> str:
        return "eval.clever"

    def check(self, eval_settings: EvalView) -> None:
        # checked when off too (n: 0), as a mistake in a switched-off block is still one
        self.validate(eval_settings.clever, eval_settings, self.where(0))

    def validate(self, settings: CleverSettings, eval_settings: EvalView, where: str) -> None:
        check_positive(settings.n, f"{where}.n", allow_zero=True, maximum=MAX_COUNT)
        check_positive(settings.n_batches, f"{where}.n_batches", maximum=MAX_COUNT)
        check_positive(settings.batch_size, f"{where}.batch_size", maximum=MAX_COUNT)
        check_positive(settings.radius, f"{where}.radius", maximum=MAX_EPS["2"])
        for i, norm in enumerate(settings.norms):
            if norm not in ("inf", "2"):
                raise ConfigError(f"{where}.norms[{i}]: must be inf or 2, got {norm!r}")

    def cells(self, settings: CleverSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
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
