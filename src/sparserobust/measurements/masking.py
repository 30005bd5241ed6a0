"""The gradient-masking check: Square (gradient-free) against the gradient attacks.

It owns :class:`MaskingSettings` (one ``eval.masking`` entry) and its checks, among them
:func:`masking_references`, the ``eval.attacks`` entries a check compares with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparserobust.attacks.registry import get_attack
from sparserobust.errors import ConfigError
from sparserobust.measurements.attack import (
    AttackSettings,
    attack_cell_params,
    attack_from_cell_params,
    attack_norm,
    build_attack,
)
from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import MAX_COUNT, MAX_EPS, check_positive


@dataclass(frozen=True)
class MaskingSettings:
    """A gradient-masking check: the gradient-free Square attack (``steps`` queries
    per point) at ``eps`` in ``norm`` on the first ``n`` test images, against the
    gradient attacks named in ``against`` (entries of ``eval.attacks`` with the same
    norm, with their settings), on the same images. A model is flagged where Square
    breaks more than 1% of the points that every gradient attack left robust."""

    norm: str = "inf"
    eps: tuple[float, ...] = ()
    n: int = 500
    steps: int = 1000
    against: tuple[str, ...] = ("pgd",)


def masking_references(
    attacks: Sequence[AttackSettings], m: MaskingSettings, key: str = "eval.masking"
) -> list[AttackSettings]:
    """The entries of ``attacks`` (a study's ``eval.attacks``) a masking check compares
    Square with (same norm); ConfigError naming ``key`` for a missing one or Square."""
    refs = []
    for j, name in enumerate(m.against):
        found = [a for a in attacks if a.name == name and attack_norm(a) == m.norm]
        if not found:
            raise ConfigError(
                f"{key}.against[{j}]: {name!r} with norm {m.norm} is not among eval.attacks; "
                "add it there or remove it here"
            )
        if name == "square":
            raise ConfigError(f"{key}.against[{j}]: compare with a gradient attack, not square")
        refs.append(found[0])
    return refs


class MaskingMeasurement(Measurement):
    """Square attack (gradient-free, ``steps`` queries) against the configured
    gradient attacks of the same norm on the same images (the first ``n``): robust
    accuracy of each and of their combination, and a flag where Square succeeds on
    points every gradient attack missed. Settings: ``eval.masking[i]``."""

    name = "masking"
    description = "gradient-masking check: Square vs the gradient attacks of eval.attacks"
    config_key = "eval.masking"

    def configured(self, settings: EvalView) -> list[MaskingSettings]:
        return list(settings.masking)

    def where(self, index: int) -> str:
        return f"eval.masking[{index}]"

    def validate(self, settings: MaskingSettings, eval_settings: EvalView, where: str) -> None:
        if settings.norm not in ("inf", "2"):
            raise ConfigError(f"{where}.norm: must be inf or 2, got {settings.norm!r}")
        if not settings.eps:
            raise ConfigError(f"{where}.eps: give at least one epsilon")
        for j, eps in enumerate(settings.eps):
            check_positive(eps, f"{where}.eps[{j}]", maximum=MAX_EPS[settings.norm])
        check_positive(settings.n, f"{where}.n", maximum=MAX_COUNT)
        check_positive(settings.steps, f"{where}.steps", maximum=MAX_COUNT)
        if not settings.against:
            raise ConfigError(f"{where}.against: name at least one gradient attack of eval.attacks")
        masking_references(eval_settings.attacks, settings, where)

    def cells(self, settings: MaskingSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
        refs = masking_references(eval_settings.attacks, settings)
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
