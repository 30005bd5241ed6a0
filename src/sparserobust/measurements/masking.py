"""The gradient-masking check: Square (gradient-free) against the gradient attacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, Measurement, Record, numbers

if TYPE_CHECKING:
    from sparserobust.config import EvalSettings, MaskingSettings


class MaskingMeasurement(Measurement):
    """Square attack (gradient-free, ``steps`` queries) against the configured
    gradient attacks of the same norm on the same images (the first ``n``): robust
    accuracy of each and of their combination, and a flag where Square succeeds on
    points every gradient attack missed. Settings: ``eval.masking[i]``."""

    name = "masking"
    description = "gradient-masking check: Square vs the gradient attacks of eval.attacks"
    config_key = "eval.masking"

    def configured(self, settings: EvalSettings) -> list[MaskingSettings]:
        return list(settings.masking)

    def cells(
        self, settings: MaskingSettings, eval_settings: EvalSettings, seed: int
    ) -> list[Cell]:
        from sparserobust.config import attack_cell_params, masking_references

        refs = masking_references(eval_settings, settings)
        params = {
            "norm": settings.norm,
            "eps": list(settings.eps),
            "n": min(settings.n, eval_settings.n),
            "steps": settings.steps,
            "against": [attack_cell_params(a) for a in refs],
            "seed": seed,
        }
        return [Cell(self.name, f"masking:square:l{settings.norm}", params)]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        params = cell.params
        from sparserobust.attacks import get_attack
        from sparserobust.config import attack_from_cell_params, build_attack
        from sparserobust.metrics.checks import gradient_free_flags

        eps = [float(e) for e in params["eps"]]
        seed = int(params["seed"])
        norm = str(params["norm"])
        square = get_attack("square", norm, steps=int(params["steps"]))
        free = square.run(model, x, y, epsilons=eps, seed=seed)
        refs = []
        for ref in params["against"]:
            attack = build_attack(attack_from_cell_params(ref))
            fixed = attack.fixed_epsilon
            refs.append(attack.run(model, x, y, epsilons=eps if fixed else None, seed=seed))
        out = gradient_free_flags(free, refs)
        tag = f"square_l{norm}"
        records = [
            Record(f"{tag} robust_acc@{float(e):g}", a, "robust_accuracy", "square", norm, float(e))
            for e, a in out["gradient_free_robust_accuracy"].items()
        ]
        records += [
            Record(
                f"{tag}+gradient robust_acc@{float(e):g}",
                v,
                "robust_accuracy",
                "square+gradient",
                norm,
                float(e),
            )
            for e, v in out["combined_robust_accuracy"].items()
            if v is not None
        ]
        records += [
            Record(
                f"{tag} missed by gradient attacks@{float(e):g} (not robustness)",
                v,
                "missed_share",
                "square",
                norm,
                float(e),
                robustness=False,
                higher_is_better=False,
            )
            for e, v in out["missed_share"].items()
            if v is not None
        ]
        flags = out.pop("flags", [])
        return numbers(records, flags, **out)
