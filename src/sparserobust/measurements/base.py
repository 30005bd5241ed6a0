"""What a measurement is: a registered object that plans cells and runs one cell.

A *measurement* (an attack, the masking check, CLEVER, activations, bounds, the
gradient check) is one :class:`Measurement` object in the registry
(:mod:`sparserobust.measurements.registry`). From a study's eval settings it plans
its :class:`Cell` s: one stored result each, identified by ``(model, cell.key,
cell.params)``. Running a cell on a model and images returns a JSON-able dict of
numbers whose ``records`` are typed :class:`Record` s: the value, the threat model
(norm, epsilon), whether it is a robustness measure and whether higher is better.
Reports and tables read those fields; nothing matches on label text.

Dispatch is by registry lookup on ``cell.measurement``; ``cell.key`` is only the
storage identity (kept as it was, e.g. ``attack:pgd:linf``, so that results stored
by earlier versions are still found) and is never parsed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from sparserobust.errors import StoreError
from sparserobust.settings import NoSettings, build_settings
from sparserobust.utils import eval_mode, forward, model_device


class EvalView(Protocol):
    """A study's ``eval`` settings as measurements read them
    (:class:`sparserobust.config.EvalSettings` is one). Measurements sit below the
    study schema, so they see it through this protocol, never import it: ``n`` test
    images, their ``batch_size``, the generic ``measurements`` blocks (name -> settings
    mapping) and the historical keys of the built-in measurements (each typed in the
    measurement that owns it)."""

    @property
    def n(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def measurements(self) -> Mapping[str, Any]: ...
    @property
    def attacks(self) -> Sequence[Any]: ...
    @property
    def masking(self) -> Sequence[Any]: ...
    @property
    def clever(self) -> Any: ...
    @property
    def activations(self) -> bool: ...
    @property
    def bounds(self) -> bool: ...


@dataclass(frozen=True)
class Record:
    """One scalar a measurement reports.

    ``label`` is the display name (e.g. ``"pgd_linf robust_acc@0.1"``), unique within
    a study; ``metric`` what is measured (``robust_accuracy``, ``median_norm``,
    ``rho``, ``clever_median``, ...); ``source`` who measured it (an attack's name,
    ``clever``, ``bounds``...); ``norm`` the threat model (``"inf"``, ``"2"`` or
    None); ``eps`` the budget in [0,1] pixel units for a robust accuracy (else None);
    ``robustness`` whether the value measures robustness (diagnostics such as the
    active-ReLU fraction do not); ``higher_is_better`` its direction (None: no
    direction, a diagnostic)."""

    label: str
    value: float
    metric: str
    source: str
    norm: str | None = None
    eps: float | None = None
    robustness: bool = True
    higher_is_better: bool | None = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not math.isfinite(self.value):
            out["value"] = None if math.isnan(self.value) else str(self.value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """The record back from :meth:`to_dict`; StoreError for a damaged one."""
        try:
            return cls._from_dict(data)
        except (TypeError, ValueError, KeyError, AttributeError):
            raise StoreError(
                f"a stored record is damaged ({str(data)[:80]}): delete its result row or "
                "re-run the study with --force"
            ) from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Record:
        value = data.get("value")
        num = math.nan if value is None else float(value)
        eps = data.get("eps")
        return cls(
            label=str(data["label"]),
            value=num,
            metric=str(data["metric"]),
            source=str(data["source"]),
            norm=None if data.get("norm") is None else str(data["norm"]),
            eps=None if eps is None else float(eps),
            robustness=bool(data.get("robustness", True)),
            higher_is_better=data.get("higher_is_better", True),
        )


@dataclass(frozen=True)
class Cell:
    """One planned result: which measurement (registry name), its storage ``key``
    and the ``params`` that identify it (change any and it is recomputed).

    ``args`` are inputs the run needs that the key already identifies (e.g. the
    norm of ``clever:l2``); they are not stored, so results stored before they
    existed are still found."""

    measurement: str
    key: str
    params: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)


class Measurement(ABC):
    """A kind of measurement. Subclasses set ``name``, ``description`` and
    ``settings_type`` and implement :meth:`configured`, :meth:`cells` and :meth:`run`.

    ``config_key`` names where a study config sets it: ``None`` means the generic
    ``eval.measurements: {name: {...}}`` block (a new measurement needs nothing else);
    the built-in ones keep their historical keys (``eval.attacks``, ``eval.clever``...).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    settings_type: ClassVar[type[Any]] = NoSettings
    config_key: ClassVar[str | None] = None

    def configured(self, settings: EvalView) -> Sequence[Any]:
        """The settings instances a study's eval settings switch on (empty: off)."""
        block = settings.measurements.get(self.name)
        if block is None:
            return []
        return [build_settings(self.settings_type, block, self.where(0))]

    def where(self, index: int) -> str:
        """The config key of the ``index``-th configured instance, for messages."""
        return f"eval.measurements.{self.name}"

    def validate(self, settings: Any, eval_settings: EvalView, where: str) -> None:
        """Raise :class:`~sparserobust.errors.ConfigError` (naming ``where``) for a bad
        value; called by config validation. Default: nothing to check."""
        return None

    def check(self, eval_settings: EvalView) -> None:
        """Validate this measurement's part of a study's eval settings: every configured
        instance through :meth:`validate`, named by :meth:`where`."""
        for i, settings in enumerate(self.configured(eval_settings)):
            self.validate(settings, eval_settings, self.where(i))

    @abstractmethod
    def cells(self, settings: Any, eval_settings: EvalView, seed: int) -> list[Cell]:
        """The cells of one configured instance for a model of seed ``seed``."""

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        """Measure ``model`` on images ``x`` (in [0,1]) with labels ``y`` (already cut
        to the cell's ``n``) for ``cell``. Returns a JSON-able dict with ``records`` (a list of
        :meth:`Record.to_dict`), optional ``flags`` and any detail worth storing."""


def numbers(records: Sequence[Record], flags: Sequence[str] = (), **detail: Any) -> dict[str, Any]:
    """The JSON-able result dict of a cell: records, flags and detail (non-finite
    floats made JSON-safe; keys starting with ``seconds`` dropped, as wall times
    live in the results row, not among the numbers)."""
    return finite_json({"records": [r.to_dict() for r in records], "flags": list(flags), **detail})


def finite_json(v: Any) -> Any:
    """JSON-safe and repeatable: NaN as null, infinities as "inf"/"-inf", wall times
    (keys starting with ``seconds``) dropped."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: finite_json(x) for k, x in v.items() if not str(k).startswith("seconds")}
    if isinstance(v, list | tuple):
        return [finite_json(x) for x in v]
    return v


@torch.no_grad()
def finite_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> bool:
    """True when ``model`` returns finite logits on every image of ``x``."""
    device = model_device(model)
    with eval_mode(model):
        return all(
            bool(torch.isfinite(forward(model, x[i : i + batch_size].to(device))).all())
            for i in range(0, x.shape[0], batch_size)
        )


NOT_MEASURED = (
    "not measured: the model returns NaN or inf logits on clean test "
    "images (it diverged in training or pruning); its numbers are missing, not zero"
)


def records_of(result: Mapping[str, Any]) -> list[Record]:
    """The typed records of a stored result.

    Results stored before records existed (version 0.1) carry only a ``headline``
    mapping of label -> value; they are read here, once, into records: the label is
    kept, and a label marked ``(not robustness)`` becomes a diagnostic."""
    if "records" in result:
        return [Record.from_dict(r) for r in result["records"]]
    out = []
    for label, value in (result.get("headline") or {}).items():
        if not isinstance(value, int | float):
            continue
        diagnostic = "(not robustness)" in label
        out.append(
            Record(
                label=label,
                value=float(value),
                metric=label,
                source="legacy",
                robustness=not diagnostic,
                higher_is_better=None if diagnostic else True,
            )
        )
    return out


def values_of(result: Mapping[str, Any]) -> dict[str, float]:
    """``{label: value}`` of a stored result's records."""
    return {r.label: r.value for r in records_of(result)}
