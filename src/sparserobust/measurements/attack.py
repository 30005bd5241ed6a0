"""The attack measurement: one configured attack (``eval.attacks``) on every model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparserobust.measurements.base import Cell, Measurement, Record, numbers

if TYPE_CHECKING:
    from sparserobust.config import AttackSettings, EvalSettings


def attack_records(attack: str, norm: str, summary: dict[str, Any]) -> list[Record]:
    """The scalar numbers of an attack summary: robust accuracy at every epsilon and,
    for a minimisation attack, the median minimal norm and rho (l_p in [0,1] pixels)."""
    from sparserobust.attacks import is_fixed_epsilon

    tag = f"{attack}_l{norm}"
    out = [
        Record(
            f"{tag} robust_acc@{float(eps):g}",
            float(acc),
            "robust_accuracy",
            attack,
            norm,
            float(eps),
        )
        for eps, acc in (summary.get("robust_accuracy") or {}).items()
        if acc is not None
    ]
    if not is_fixed_epsilon(attack):  # minimisation attacks: the norms are the point
        for key in ("median_norm", "rho"):
            if summary.get(key) is not None:
                out.append(Record(f"{tag} {key}", float(summary[key]), key, attack, norm))
    return out


class AttackMeasurement(Measurement):
    """Robust accuracy (and minimal norms) of one attack, its settings from
    ``eval.attacks[i]`` (name, norm, eps, steps/restarts/search_steps and ``params``)."""

    name = "attack"
    description = "an attack of eval.attacks: robust accuracy per epsilon, minimal norms"
    config_key = "eval.attacks"

    def configured(self, settings: EvalSettings) -> list[AttackSettings]:
        return list(settings.attacks)

    def cells(self, settings: AttackSettings, eval_settings: EvalSettings, seed: int) -> list[Cell]:
        from sparserobust.config import attack_cell_params, attack_norm

        norm = attack_norm(settings)
        params = {**attack_cell_params(settings), "norm": norm, "n": eval_settings.n, "seed": seed}
        return [Cell(self.name, f"attack:{settings.name}:l{norm}", params)]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        params = cell.params
        from sparserobust.config import attack_from_cell_params, build_attack
        from sparserobust.metrics.checks import monotonicity_flags, result_flags
        from sparserobust.metrics.robustness import summarize

        settings = attack_from_cell_params(params)
        attack = build_attack(settings)
        eps = [float(e) for e in params.get("eps", [])]
        result = attack.run(model, x, y, epsilons=eps or None, seed=int(params["seed"]))
        summary = summarize(result, epsilons=eps or None)
        norm = str(params["norm"])
        flags = result_flags(model, result, batch_size) + monotonicity_flags(
            summary.get("robust_accuracy") or {}, f"{settings.name} l{norm}"
        )
        records = attack_records(settings.name, norm, summary)
        detail: dict[str, Any] = {"summary": summary}
        if not attack.fixed_epsilon:  # per-sample minimal norms: any epsilon's accuracy later
            detail["distances"] = [
                float(d) if bool(c) else 0.0
                for d, c in zip(
                    result.distances.tolist(), result.clean_correct.tolist(), strict=True
                )
            ]
        return numbers(records, flags, **detail)
