"""Pruning method registry: name -> the :class:`~sparserobust.pruning.base.PruningMethod`
that prunes a model to one target.

``magnitude`` (layer-wise, Han et al. 2015), ``global-magnitude`` (one |W|
threshold across layers), ``random`` (control: uniform random masks at the
layer-wise rates) and ``structured`` (whole neurons/channels by l1 norm; its
level is the share of units removed per layer) prune in one shot and are made
iterative by retraining between steps; ``dns`` (Dynamic Network Surgery) and
``hydra`` (scores learned under the training loss, then fine-tuning) train
while they prune. A new method is one file (a ``PruningMethod`` subclass with its
settings dataclass) plus one line here; sweeps, studies and configs dispatch through
this table and nothing else.
"""

from __future__ import annotations

from sparserobust.errors import ConfigError
from sparserobust.pruning.base import PruningMethod
from sparserobust.pruning.dns import DNSMethod
from sparserobust.pruning.hydra import HydraMethod
from sparserobust.pruning.magnitude import GlobalMagnitudeMethod, MagnitudeMethod
from sparserobust.pruning.random import RandomMethod
from sparserobust.pruning.structured import StructuredMethod

METHODS: dict[str, PruningMethod] = {
    m.name: m
    for m in (
        MagnitudeMethod(),
        GlobalMagnitudeMethod(),
        RandomMethod(),
        DNSMethod(),
        HydraMethod(),
        StructuredMethod(),
    )
}


def method_names() -> list[str]:
    """Names accepted by :func:`pruning_method`."""
    return list(METHODS)


def pruning_method(name: str) -> PruningMethod:
    """The registry entry for ``name``; ConfigError naming the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown pruning method {name!r}: choose one of {', '.join(method_names())}"
        ) from None
