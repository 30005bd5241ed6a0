"""Attack registry: a name (fgsm, pgd, square, apgd, autoattack, deepfool, ...) -> an attack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparserobust.attacks.apgd import APGD, APGDTargeted
from sparserobust.attacks.autoattack import AutoAttack
from sparserobust.attacks.base import INF, Attack, norm_name, parse_norm
from sparserobust.attacks.cw import CarliniWagnerL2
from sparserobust.attacks.ddn import DDN
from sparserobust.attacks.deepfool import DeepFool
from sparserobust.attacks.fab import FAB, FABTargeted
from sparserobust.attacks.fgsm import FGSM
from sparserobust.attacks.minl2 import MinL2
from sparserobust.attacks.pgd import PGD
from sparserobust.attacks.square import Square
from sparserobust.errors import AttackError

_REGISTRY: dict[str, tuple[Callable[..., Attack], tuple[float, ...]]] = {
    "fgsm": (FGSM, (INF,)),
    "pgd": (PGD, (INF, 2.0)),
    "square": (Square, (INF, 2.0)),
    "apgd": (APGD, (INF, 2.0)),
    "apgd-t": (APGDTargeted, (INF, 2.0)),
    "fab-t": (FABTargeted, (INF, 2.0)),
    "autoattack": (AutoAttack, (INF, 2.0)),
    "fab": (FAB, (INF, 2.0)),
    "deepfool": (DeepFool, (2.0, INF)),
    "cw": (CarliniWagnerL2, (2.0,)),
    "ddn": (DDN, (2.0,)),
    "min-l2": (MinL2, (2.0,)),
}


def attack_names() -> list[str]:
    """Names accepted by :func:`get_attack`."""
    return list(_REGISTRY)


def attack_norms(name: str) -> tuple[float, ...]:
    """The norms attack ``name`` supports; the first is its default."""
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[Callable[..., Attack], tuple[float, ...]]:
    key = name.strip().lower().replace("_", "-")
    aliases = {"minl2": "min-l2", "carlini-wagner": "cw", "c&w": "cw", "apgd-ce": "apgd"}
    key = aliases.get(key, key)
    if key not in _REGISTRY:
        raise AttackError(f"unknown attack {name!r}: choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def get_attack(name: str, norm: float | str | None = None, **params: Any) -> Attack:
    """Build attack ``name`` for ``norm`` (2 or inf; None: the attack's default)
    with keyword hyperparameters ``params`` (see each attack's class)."""
    factory, norms = _lookup(name)
    p = norms[0] if norm is None else parse_norm(norm)
    if p not in norms:
        supported = " or ".join(norm_name(q) for q in norms)
        raise AttackError(f"attack {name!r} supports {supported}, not {norm_name(p)}")
    if len(norms) > 1:
        params["norm"] = p
    try:
        return factory(**params)
    except TypeError as exc:
        raise AttackError(f"bad parameter for attack {name!r}: {exc}") from None
