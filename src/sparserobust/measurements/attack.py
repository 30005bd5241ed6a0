"""The attack measurement: one configured attack (``eval.attacks``) on every model.

It owns :class:`AttackSettings` (one ``eval.attacks`` entry), its checks, and how an
entry becomes an attack object (:func:`build_attack`) and a stored identity
(:func:`attack_cell_params`, read back by :func:`attack_from_cell_params`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparserobust.attacks.base import Attack
from sparserobust.attacks.registry import (
    attack_names,
    attack_norms,
    attack_settings,
    get_attack,
    is_fixed_epsilon,
)
from sparserobust.errors import AttackError, ConfigError
from sparserobust.measurements.base import Cell, EvalView, Measurement, Record, numbers
from sparserobust.settings import (
    MAX_COUNT,
    MAX_EPS,
    NEW_FIELD,
    build_settings,
    check_positive,
)


@dataclass(frozen=True)
class AttackSettings:
    """One attack to run on every model.

    ``eps`` (fixed-epsilon attacks fgsm/pgd/square, and thresholds at which minimal-norm
    attacks report robust accuracy) are perturbation budgets in [0,1] pixel space
    in the attack's norm. ``steps``/``restarts``/``search_steps`` set the budget;
    ``params`` sets any other constructor argument of the attack (validated against
    :func:`sparserobust.attacks.registry.attack_settings`).
    """

    name: str
    norm: str | None = None
    eps: tuple[float, ...] = ()
    steps: int | None = None
    restarts: int | None = None
    search_steps: int | None = None
    params: dict[str, Any] = field(default_factory=dict, metadata=NEW_FIELD)


_SHORTCUTS = (("steps", "steps"), ("restarts", "restarts"), ("search_steps", "binary_search_steps"))
"""AttackSettings shortcut fields -> the attack constructor argument they set."""


def attack_params(a: AttackSettings) -> dict[str, Any]:
    """Keyword hyperparameters for the attack's constructor: the shortcut fields
    (steps, restarts, search_steps) that are set, then ``params``."""
    params: dict[str, Any] = {}
    for field_name, arg in _SHORTCUTS:
        value = getattr(a, field_name)
        if value is not None:
            params[arg] = value
    return {**params, **a.params}


def attack_cell_params(a: AttackSettings) -> dict[str, Any]:
    """The settings of ``a`` as stored with its results (every field; ``params`` only
    when set, so results stored before it existed keep their identity)."""
    out: dict[str, Any] = {
        "name": a.name,
        "norm": a.norm,
        "eps": list(a.eps),
        "steps": a.steps,
        "restarts": a.restarts,
        "search_steps": a.search_steps,
    }
    if a.params:
        out["params"] = dict(a.params)
    return out


def attack_from_cell_params(params: dict[str, Any]) -> AttackSettings:
    """The :class:`AttackSettings` back from :func:`attack_cell_params`' dict."""
    return AttackSettings(
        name=str(params["name"]),
        norm=None if params.get("norm") is None else str(params["norm"]),
        eps=tuple(float(e) for e in params.get("eps", ())),
        steps=params.get("steps"),
        restarts=params.get("restarts"),
        search_steps=params.get("search_steps"),
        params=dict(params.get("params") or {}),
    )


def build_attack(a: AttackSettings) -> Attack:
    """The configured attack object of ``a``."""
    return get_attack(a.name, attack_norm(a), **attack_params(a))


def attack_norm(a: AttackSettings) -> str:
    """The attack's norm as "inf" or "2": the configured one, else the attack's default."""
    if a.norm is not None:
        return a.norm
    return "inf" if math.isinf(attack_norms(a.name)[0]) else "2"


def check_attack_settings(a: AttackSettings, key: str) -> None:
    """ConfigError naming ``key`` for an unknown attack or norm, an epsilon out of range,
    a fixed-epsilon attack without epsilons, a bad budget, or ``params`` the attack does
    not take. The attack is built now, so a setting it refuses fails at load, not hours
    in."""
    if a.name not in attack_names():
        raise ConfigError(
            f"{key}.name: unknown attack {a.name!r}; choose from {', '.join(attack_names())}"
        )
    if a.norm is not None and a.norm not in ("inf", "2"):
        raise ConfigError(f"{key}.norm: must be inf or 2, got {a.norm!r}")
    for j, eps in enumerate(a.eps):
        check_positive(eps, f"{key}.eps[{j}]", maximum=MAX_EPS[attack_norm(a)])
    if is_fixed_epsilon(a.name) and not a.eps:
        raise ConfigError(f"{key}.eps: {a.name} needs at least one epsilon")
    check_positive(a.steps, f"{key}.steps", maximum=MAX_COUNT)
    check_positive(a.restarts, f"{key}.restarts", maximum=MAX_COUNT)
    check_positive(a.search_steps, f"{key}.search_steps", maximum=MAX_COUNT)
    build_settings(attack_settings(a.name), a.params, f"{key}.params")  # names, types
    for field_name, arg in _SHORTCUTS:
        if getattr(a, field_name) is not None and arg in a.params:
            raise ConfigError(f"{key}.params.{arg}: also set by {key}.{field_name}; set it once")
    try:
        get_attack(a.name, a.norm, **attack_params(a))
    except AttackError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def attack_records(attack: str, norm: str, summary: dict[str, Any]) -> list[Record]:
    """The scalar numbers of an attack summary: robust accuracy at every epsilon and,
    for a minimisation attack, the median minimal norm and rho (l_p in [0,1] pixels)."""
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

    def configured(self, settings: EvalView) -> list[AttackSettings]:
        return list(settings.attacks)

    def where(self, index: int) -> str:
        return f"eval.attacks[{index}]"

    def validate(self, settings: AttackSettings, eval_settings: EvalView, where: str) -> None:
        check_attack_settings(settings, where)

    def cells(self, settings: AttackSettings, eval_settings: EvalView, seed: int) -> list[Cell]:
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
