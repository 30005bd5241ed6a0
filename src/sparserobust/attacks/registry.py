"""Attack registry: a name -> the attack class, its norms, and its settings dataclass.

The registry is the one source of attack names: config validation, the CLI's
choices and help, and the tests all ask it (:func:`attack_names`,
:func:`is_fixed_epsilon`, :func:`attack_settings`). Adding an attack is one file
plus one line in :data:`_REGISTRY`.

An attack's settings are its constructor's keyword arguments: :func:`attack_settings`
derives a frozen dataclass from the constructor's signature (names, types and
defaults), so a config's ``params:`` block is validated against exactly what the
attack takes, and a new constructor argument is a new setting without a second
list to update.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from sparserobust.attacks.apgd import APGD, APGDTargeted
from sparserobust.attacks.autoattack import AutoAttack, AutoAttackFast
from sparserobust.attacks.base import Attack
from sparserobust.attacks.cw import CarliniWagnerL2
from sparserobust.attacks.ddn import DDN
from sparserobust.attacks.deepfool import DeepFool
from sparserobust.attacks.fab import FAB, FABTargeted
from sparserobust.attacks.fgsm import FGSM
from sparserobust.attacks.minl2 import MinL2
from sparserobust.attacks.norms import INF, norm_name, parse_norm
from sparserobust.attacks.pgd import PGD
from sparserobust.attacks.square import Square
from sparserobust.errors import AttackError

_REGISTRY: dict[str, tuple[type[Attack], tuple[float, ...]]] = {
    "fgsm": (FGSM, (INF,)),
    "pgd": (PGD, (INF, 2.0)),
    "square": (Square, (INF, 2.0)),
    "apgd": (APGD, (INF, 2.0)),
    "apgd-t": (APGDTargeted, (INF, 2.0)),
    "fab-t": (FABTargeted, (INF, 2.0)),
    "autoattack": (AutoAttack, (INF, 2.0)),
    "autoattack-fast": (AutoAttackFast, (INF, 2.0)),
    "fab": (FAB, (INF, 2.0)),
    "deepfool": (DeepFool, (2.0, INF)),
    "cw": (CarliniWagnerL2, (2.0,)),
    "ddn": (DDN, (2.0,)),
    "min-l2": (MinL2, (2.0,)),
}
"""name -> (attack class, supported norms; the first is the default)."""

_ALIASES = {"minl2": "min-l2", "carlini-wagner": "cw", "c&w": "cw", "apgd-ce": "apgd"}
_PLAIN = (int, float, bool, str)


def attack_names() -> list[str]:
    """Names accepted by :func:`get_attack`, in registry order."""
    return list(_REGISTRY)


def attack_norms(name: str) -> tuple[float, ...]:
    """The norms attack ``name`` supports; the first is its default."""
    return _lookup(name)[1]


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``."""
    return _lookup(name)[0]


def is_fixed_epsilon(name: str) -> bool:
    """True for attacks that take epsilons (FGSM, PGD, Square), False for
    minimisation attacks (they report per-sample minimal norms)."""
    return bool(_lookup(name)[0].fixed_epsilon)


def canonical_name(name: str) -> str:
    """The registry name of ``name`` or one of its aliases; AttackError if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise AttackError(f"unknown attack {name!r}: choose one of {', '.join(_REGISTRY)}")
    return key


def _lookup(name: str) -> tuple[type[Attack], tuple[float, ...]]:
    return _REGISTRY[canonical_name(name)]


def _plain_type(tp: Any) -> bool:
    """A settable type: int/float/bool/str, optionally ``| None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) == 1 and args[0] in _PLAIN
    return tp in _PLAIN


@functools.cache
def attack_settings(name: str) -> type[Any]:
    """The settings dataclass of attack ``name``: one field per keyword argument of
    its constructor with a plain type (int, float, bool, str, optionally None),
    with the constructor's default. ``norm`` is not a setting (it is chosen
    separately)."""
    cls = attack_class(name)
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = []
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "norm") or param.kind not in (
            param.POSITIONAL_OR_KEYWORD,
            param.KEYWORD_ONLY,
        ):
            continue
        tp = hints.get(pname)
        if tp is None or not _plain_type(tp) or param.default is inspect.Parameter.empty:
            continue
        fields.append((pname, tp, dataclasses.field(default=param.default)))
    title = "".join(part.capitalize() for part in canonical_name(name).split("-"))
    return dataclasses.make_dataclass(f"{title}Settings", fields, frozen=True)


def get_attack(name: str, norm: float | str | None = None, **params: Any) -> Attack:
    """Build attack ``name`` for ``norm`` (2 or inf; None: the attack's default)
    with keyword hyperparameters ``params`` (see :func:`attack_settings`)."""
    factory, norms = _lookup(name)
    p = norms[0] if norm is None else parse_norm(norm)
    if p not in norms:
        supported = " or ".join(norm_name(q) for q in norms)
        raise AttackError(f"attack {name!r} supports {supported}, not {norm_name(p)}")
    if len(norms) > 1:
        params["norm"] = p
    builder: Callable[..., Attack] = factory
    try:
        return builder(**params)
    except TypeError as exc:
        raise AttackError(f"bad parameter for attack {name!r}: {exc}") from None
