"""Norms: the one norm type and its one parser.

A norm is given as a number (``2``, ``2.0``, ``math.inf``) or as text (``"2"``, ``"l2"``,
``"L2"``, ``"l_2"``, ``"inf"``, ``"infinity"``, ``"linf"``, ``"l_inf"``); inside the
package it is a :data:`Norm`, the float ``p`` (``2.0`` or ``math.inf``). It is written
back as a *key* (``"2"``, ``"inf"``: config values, stored cell parameters) or a *name*
(``"l2"``, ``"linf"``: labels). Every distance is measured in [0,1] pixel space on the
flattened input: ``p = 2`` the Euclidean distance, ``p = inf`` the largest absolute
pixel change.
"""

from __future__ import annotations

import math

from sparserobust.errors import NormError

Norm = float
"""A norm's exponent ``p``: ``2.0`` or ``math.inf``."""

INF: Norm = math.inf


def parse_norm(norm: float | str) -> Norm:
    """``2``/``"2"``/``"l2"``/``"l_2"`` -> 2.0 and ``inf``/``"inf"``/``"linf"``/``"l_inf"``
    -> ``math.inf`` (case and surrounding spaces ignored); :class:`NormError` otherwise."""
    if isinstance(norm, bool):
        raise NormError(f"unsupported norm {norm!r}: use 2 or inf")
    text = str(norm).strip().lower().removeprefix("l").removeprefix("_")
    if text in {"inf", "infinity"}:
        return INF
    if text in {"2", "2.0"}:
        return 2.0
    raise NormError(f"unsupported norm {norm!r}: use 2 or inf")


def norm_key(norm: float | str) -> str:
    """The norm as a config value and stored key: ``"inf"`` or ``"2"``."""
    return "inf" if math.isinf(parse_norm(norm)) else "2"


def norm_name(norm: float | str) -> str:
    """The norm as a label: ``"linf"`` or ``"l2"``."""
    return f"l{norm_key(norm)}"
