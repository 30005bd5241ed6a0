"""Pruning method registry: name -> how to prune a model to one sparsity.

``magnitude`` (layer-wise, Han et al. 2015), ``global-magnitude`` (one |W|
threshold across layers), ``random`` (control: uniform random masks at the
layer-wise rates) and ``structured`` (whole neurons/channels by l1 norm; its
level is the share of units removed per layer) prune in one shot and are made
iterative by retraining between steps; ``dns`` (Dynamic Network Surgery) and
``hydra`` (scores learned under the training loss, then fine-tuning) train
while they prune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.pruning.dns import DNSConfig
from sparserobust.pruning.hydra import HydraSettings
from sparserobust.pruning.magnitude import global_magnitude_prune, magnitude_prune
from sparserobust.pruning.masks import SparsityReport
from sparserobust.pruning.random import random_prune
from sparserobust.pruning.structured import (
    StructuredSettings,
    structured_fraction,
    structured_prune,
)
from sparserobust.settings import NoSettings

OneShot = Callable[[nn.Module, float, int], SparsityReport]
"""``(model, sparsity, seed) -> report``: prune in place to ``sparsity`` once."""


@dataclass(frozen=True)
class PruningMethod:
    """A registered method: its one-shot pruner (None for DNS and HYDRA, which
    train), its settings dataclass (what a config's ``pruning.params.<name>`` block may
    set), and ``level(model)``, how far a model is along the method's target axis
    (None: weight sparsity; ``structured``: the share of units removed)."""

    name: str
    description: str
    one_shot: OneShot | None
    settings_type: type[Any] = NoSettings
    level: Callable[[nn.Module], float] | None = None

    @property
    def trains_while_pruning(self) -> bool:
        return self.one_shot is None


METHODS: dict[str, PruningMethod] = {
    "magnitude": PruningMethod(
        "magnitude",
        "layer-wise magnitude pruning (Han et al. 2015): every layer to the same rate",
        lambda model, s, seed: magnitude_prune(model, s),
    ),
    "global-magnitude": PruningMethod(
        "global-magnitude",
        "global magnitude pruning: one |W| threshold across all layers",
        lambda model, s, seed: global_magnitude_prune(model, s),
    ),
    "random": PruningMethod(
        "random",
        "random pruning (control): uniform random masks at the layer-wise rates",
        lambda model, s, seed: random_prune(model, s, seed=seed),
    ),
    "dns": PruningMethod(
        "dns", "Dynamic Network Surgery (Guo et al. 2016): pruning and splicing", None, DNSConfig
    ),
    "hydra": PruningMethod(
        "hydra",
        "HYDRA (Sehwag et al. 2020): per-weight scores learned under the (adversarial) "
        "training loss with weights frozen, top-k per layer, then fine-tuning",
        None,
        HydraSettings,
    ),
    "structured": PruningMethod(
        "structured",
        "structured pruning: whole neurons (Linear) and channels (Conv) by l1 norm, never "
        "the classifier's outputs; the target is the share of units removed per layer",
        lambda model, s, seed: structured_prune(model, s),
        StructuredSettings,
        level=structured_fraction,
    ),
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
