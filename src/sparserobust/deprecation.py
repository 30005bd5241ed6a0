"""Renamed public names: the old name stays importable from its module, with a
:class:`DeprecationWarning` naming the new one (for code written against an earlier
release; nothing inside the package uses an old name)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any


def renamed_attribute(
    module: str, namespace: Mapping[str, Any], renamed: Mapping[str, str], name: str
) -> Any:
    """The object an old ``name`` of ``module`` now goes by (``renamed``: old -> new name,
    looked up in the module's ``namespace``), with a DeprecationWarning; AttributeError
    for any other name. Call it from the module's ``__getattr__`` (PEP 562)."""
    if name not in renamed:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new = renamed[name]
    warnings.warn(
        f"{module}.{name} is renamed {new}: import {new} (the old name will be removed)",
        DeprecationWarning,
        stacklevel=3,
    )
    return namespace[new]
