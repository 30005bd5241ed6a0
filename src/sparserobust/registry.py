"""Name lookup shared by the dataset, model and pruning-method registries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from sparserobust.errors import ConfigError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or a ConfigError that names ``what`` and lists the choices."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown {what} {name!r}: choose one of {', '.join(sorted(registry))}"
        ) from None
