"""Settings: the YAML-to-dataclass converter, the limits of every setting, ``NEW_FIELD``.

A leaf module (it imports nothing of sparserobust but the errors and the norm parser):
every component (attack, pruning method, measurement, training) declares its settings as
a frozen dataclass, and :func:`build_settings` turns a config mapping into it, naming the key of
any mistake (``pruning.params.dns.gamma: expected a number``). It is also the one place
that bounds values: :func:`build_settings` checks every built field against
:func:`check_bounds` (counts, epochs, radii, learning rates), so a shortcut field, a
``params:`` block, a CLI flag and a Ray worker all meet the same limits.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

import yaml

from sparserobust.errors import ConfigError, NormError
from sparserobust.norms import norm_key


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """Settings of a component (pruning method, measurement) that takes none: any key in
    its config block is an error."""


NEW_FIELD = {"hash_default": False}
"""Metadata of a field added after version 0.1: the config hash leaves it out while it
has its default, so adding it changed no existing hash (and no run directory)."""


MAX_INT = 2**63 - 1
"""No integer setting may exceed this (SQLite's and torch's int64)."""
MAX_FLOAT = 1e12
"""No number in a config is this large; each setting has its own, tighter range."""
MAX_DEPTH = 32
"""How deeply a config's mappings and lists may nest."""
MAX_NODES = 100_000
"""How many values (after YAML aliases are expanded) a config may hold."""
SEED_LIMIT = 2**32
"""Seeds are in [0, 2**32): numpy's seed range."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A study name: it names the folder ``runs/<name>-<hash>``, so no path separators."""


def short(value: Any) -> str:
    """``repr(value)`` cut to 60 characters (a one-line error for any input)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def key_text(key: Any) -> str:
    """A config key as it appears in a message: plain names as they are, anything else
    (spaces, newlines, control characters) quoted, so a message stays one line."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", text) else short(text)


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert YAML ``value`` to type ``tp``; ConfigError naming ``where`` if impossible."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, where)
    if origin is dict:
        # a settings block: kept as given, validated against its owner's dataclass later
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where}: keys must be names, got {bad[0]!r}")
        _, item_tp = typing.get_args(tp)
        if item_tp is Any:
            return dict(value)
        return {k: coerce(v, item_tp, f"{where}.{key_text(k)}") for k, v in value.items()}
    if tp is Any:
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{where}: {short(value)} is far too large: give a sane value")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {short(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or abs(number) > MAX_FLOAT:
            raise ConfigError(f"{where}: expected a finite number of sane size, got {short(value)}")
        return number
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if "\x00" in str(value):
            raise ConfigError(f"{where}: contains a NUL character: remove it")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {type_name(tp)}")  # pragma: no cover


def build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{prefix}{key_text(unknown[0])}: unknown key; "
            f"allowed keys are {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        built = cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None
    check_bounds(built, where)
    return built


def build_settings(cls: Any, data: Any, where: str) -> Any:
    """A settings dataclass ``cls`` from a config ``params:`` mapping ``data``;
    ConfigError naming the key (``where.key``) for an unknown key or a bad value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    return build(cls, data, where)


def check_positive(
    value: float | int | None,
    where: str,
    allow_zero: bool = False,
    maximum: float | None = None,
) -> None:
    """ConfigError unless ``value`` is None or in ``(0, maximum]`` (``[0, maximum]``
    with ``allow_zero``)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where}: must be at most {maximum:g}, got {short(value)}")


MAX_EPOCHS = 10_000
MAX_COUNT = 1_000_000
"""Largest number of images, steps, batch size etc. a config may ask for."""
MAX_LR = 10.0
MAX_EPS = {"inf": 1.0, "2": 100.0}
"""Largest epsilon per norm, in [0,1] pixel space (l2: above any image's diameter here)."""
MAX_JOBS = 256
"""Most worker processes (``-j``) any executor may start; how many the machine's CPUs
allow is checked where the pool is made (:func:`sparserobust.engine.executors.check_jobs`)."""
MAX_TIME_LIMIT = 86_400.0
"""Longest per-point time limit of a verifier, in seconds (a day)."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a mapping with a key given twice (plain YAML
    keeps the last one silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    raise ConfigError(
                        f"line {key_node.start_mark.line + 1}: a key must be a name"
                    ) from None
                if duplicate:
                    raise ConfigError(
                        f"line {key_node.start_mark.line + 1}: key {short(key)} is given "
                        "twice: keep one"
                    )
        return super().construct_mapping(node, deep=deep)


def check_shape(data: Any, where: str = "config") -> None:
    """ConfigError when ``data`` nests deeper than :data:`MAX_DEPTH` or holds more
    than :data:`MAX_NODES` values (YAML aliases counted as often as they are used)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} nests too deeply: flatten it (at most {MAX_DEPTH} levels)")
        if count > MAX_NODES:
            raise ConfigError(f"{where} holds more than {MAX_NODES} values: shorten it")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)


NOT_COUNTS = frozenset({"norm"})
"""Integer settings that are not counts (structured pruning's l_p order)."""
SEEDS = frozenset({"seed", "seeds"})
"""Seed settings: integers in ``[0, SEED_LIMIT)``."""
FRACTIONS = frozenset({"max_accuracy_drop"})
"""Settings that are fractions in [0, 1]."""


def _norm_key(norm: Any) -> str | None:
    """``"inf"`` or ``"2"`` for a norm given as text or number; None if unknown."""
    try:
        return norm_key(norm)
    except NormError:
        return None


def _is_radius(name: str) -> bool:
    return name in ("eps", "epsilons", "init_epsilon") or name.endswith("_eps")


def _is_real(name: str) -> bool:
    """Settings that are real numbers (an integer given for one is checked as a float)."""
    return (
        _is_radius(name)
        or name in ("lr", "time_limit")
        or name.endswith("_lr")
        or (name in FRACTIONS)
    )


def check_value(name: str, value: Any, where: str, norm: Any = None) -> None:
    """The one range check of a setting called ``name`` (any component's, any route:
    a config field, a ``params:`` entry, a CLI flag, the Python API): seeds (``seed``,
    ``seeds``) in ``[0, SEED_LIMIT)``, worker counts (``jobs``) in ``[1, MAX_JOBS]``,
    other integers are counts in ``[0, MAX_COUNT]`` (epochs: ``MAX_EPOCHS``). Floats
    must be finite: radii (``eps``, ``*_eps``, ``epsilons``, ``init_epsilon``) in
    ``[0, MAX_EPS[norm]]`` (the larger limit when the norm is unknown), learning rates
    (``lr``, ``*_lr``) in ``(0, MAX_LR]``, time limits (``time_limit``) in
    ``(0, MAX_TIME_LIMIT]`` seconds, fractions (:data:`FRACTIONS`) in [0, 1]; an integer
    given for one of these is checked as that number. ConfigError naming ``where``
    otherwise; other names and types pass."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, tuple | list):
        for i, v in enumerate(value):
            check_value(name, v, f"{where}[{i}]", norm)
        return
    if isinstance(value, int) and name in SEEDS:
        if not 0 <= value < SEED_LIMIT:
            raise ConfigError(f"{where}: a seed must be in [0, 2**32), got {short(value)}")
    elif isinstance(value, int) and name == "jobs":
        if not 1 <= value <= MAX_JOBS:
            raise ConfigError(
                f"{where}: the number of workers must be in [1, {MAX_JOBS}], got {short(value)}"
            )
    elif isinstance(value, int) and _is_real(name):
        check_value(name, float(value), where, norm)
    elif isinstance(value, int) and name not in NOT_COUNTS:
        count_limit = MAX_EPOCHS if name == "epochs" or name.endswith("_epochs") else MAX_COUNT
        check_positive(value, where, allow_zero=True, maximum=count_limit)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value}")
        if _is_radius(name):
            key = _norm_key(norm)
            radius = MAX_EPS[key] if key is not None else max(MAX_EPS.values())
            check_positive(value, where, allow_zero=True, maximum=radius)
        elif name == "lr" or name.endswith("_lr"):
            check_positive(value, where, maximum=MAX_LR)
        elif name == "time_limit":
            check_positive(value, where, maximum=MAX_TIME_LIMIT)
        elif name in FRACTIONS:
            check_positive(value, where, allow_zero=True, maximum=1.0)


def check_bounds(settings: Any, where: str) -> None:
    """:func:`check_value` on every field of the settings dataclass ``settings`` (its
    ``norm`` field, if any, sets the radius limit)."""
    prefix = f"{where}." if where else ""
    norm = getattr(settings, "norm", None)
    for f in dataclasses.fields(settings):
        check_value(f.name, getattr(settings, f.name), f"{prefix}{f.name}", norm)
