"""What a pruning method is: one interface, :meth:`PruningMethod.prune`, that the
registry dispatches to.

A method is one file holding a :class:`PruningMethod` subclass (and its settings
dataclass, if it takes any) plus one line in :data:`sparserobust.pruning.registry.METHODS`.
``prune(model, target, context, settings)`` prunes a model in place to ``target`` with
what :class:`PruneContext` offers (training data, a retraining recipe or callable, the
number of pruning steps, a seed). One-shot methods subclass :class:`OneShotMethod` and
implement only :meth:`OneShotMethod.prune_once`: pruning in ``context.steps`` steps with
retraining after each comes with it.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from sparserobust.data import Split
from sparserobust.errors import ConfigError
from sparserobust.pruning.masks import SparsityReport, refresh_pruned_weights, sparsity_report
from sparserobust.settings import NoSettings
from sparserobust.training import StepHook, TrainConfig, train_model

TrainFn = Callable[[nn.Module, StepHook | None], None]
"""``train(model, after_step)``: trains ``model`` in place, calling ``after_step(step,
model)`` (when not None) after every optimiser step."""

Retrain = TrainConfig | TrainFn
"""How a method retrains: a :class:`~sparserobust.training.TrainConfig` recipe (with a
``train`` split) or a callable ``retrain(model, after_step)``."""


@dataclass(frozen=True)
class PruneContext:
    """What a pruning method may use besides the model, its target and its settings.

    ``train``: the training split (needed with a TrainConfig ``retrain``);
    ``retrain``: how to retrain (None: never); ``steps``: pruning steps per target for
    one-shot methods (>= 1); ``seed``: random masks, draws and retraining order;
    ``retrain_steps``: optimiser steps of a callable ``retrain`` where a method needs
    them (DNS's ramp; None: unknown); ``progress``: show training progress bars."""

    train: Split | None = None
    retrain: Retrain | None = None
    steps: int = 1
    seed: int = 0
    retrain_steps: int | None = None
    progress: bool = False

    def trainer(self, seed: int, desc: str) -> tuple[TrainFn | None, int | None]:
        """``retrain`` as a callable (seeded with ``seed`` on top of the recipe's seed)
        and its number of optimiser steps (None when unknown); (None, None) without
        retraining, (None, 0) for a recipe of 0 epochs."""
        return make_trainer(self.retrain, self.train, seed, self.progress, desc)


def make_trainer(
    retrain: Retrain | None, train: Split | None, seed: int, progress: bool, desc: str
) -> tuple[TrainFn | None, int | None]:
    """A callable trainer of ``retrain`` and its number of steps (None when unknown)."""
    if retrain is None:
        return None, None
    if isinstance(retrain, TrainConfig):
        if train is None:
            raise ConfigError("retraining with a TrainConfig needs the training split (train=...)")
        if retrain.epochs == 0:
            return None, 0
        config = dataclasses.replace(retrain, seed=retrain.seed + seed)
        steps = config.epochs * math.ceil(len(train) / config.batch_size)
        split = train

        def run(model: nn.Module, after_step: StepHook | None) -> None:
            train_model(model, split, config, progress=progress, after_step=after_step, desc=desc)
            refresh_pruned_weights(model)  # drop the autograd graph: keeps it deep-copyable

        return run, steps
    if callable(retrain):
        user_fn = retrain

        def run_user(model: nn.Module, after_step: StepHook | None) -> None:
            user_fn(model, after_step)
            refresh_pruned_weights(model)

        return run_user, None
    raise ConfigError(f"retrain must be a TrainConfig or a callable, got {type(retrain).__name__}")


class PruningMethod(ABC):
    """A registered pruning method. Subclasses set ``name`` and ``description``,
    ``settings_type`` (the dataclass a config's ``pruning.params.<name>`` block builds;
    :class:`~sparserobust.settings.NoSettings` when it takes none) and implement
    :meth:`prune`.

    ``trains_while_pruning``: the method needs retraining to prune at all (DNS, HYDRA).
    ``targets_weights``: the target is weight sparsity (False: :meth:`level` says what it
    is, e.g. the share of units removed)."""

    name: ClassVar[str]
    description: ClassVar[str]
    settings_type: ClassVar[type[Any]] = NoSettings
    trains_while_pruning: ClassVar[bool] = False
    targets_weights: ClassVar[bool] = True

    @abstractmethod
    def prune(
        self, model: nn.Module, target: float, context: PruneContext, settings: Any
    ) -> SparsityReport:
        """Prune ``model`` in place to ``target`` (on the method's own axis, :meth:`level`)
        with ``settings`` (an instance of ``settings_type``); the exact weight counts."""

    def level(self, model: nn.Module) -> float:
        """How far ``model`` is along the method's target axis: weight sparsity (the
        fraction of Linear/Conv weights removed) unless the method says otherwise."""
        return sparsity_report(model).sparsity

    def sweep_identity(self, settings: Any) -> dict[str, Any]:
        """Entries of a sweep's identity (stored in each level's checkpoint; a resumed
        sweep must match it) that come from ``settings``. Default: none, so a method
        whose settings change no number needs nothing here."""
        return {}

    def check_settings(self, settings: Any) -> Any:
        """``settings`` (the defaults for None) when an instance of ``settings_type``;
        ConfigError otherwise."""
        if settings is None:
            return self.settings_type()
        if not isinstance(settings, self.settings_type):
            raise ConfigError(
                f"pruning method {self.name} takes {self.settings_type.__name__}, "
                f"got {type(settings).__name__}"
            )
        return settings


class OneShotMethod(PruningMethod):
    """A method that prunes once to a level (:meth:`prune_once`); :meth:`prune` reaches
    the target in ``context.steps`` steps (the kept fraction shrinking geometrically from
    the current level), retraining after each step when ``context.retrain`` is given."""

    @abstractmethod
    def prune_once(self, model: nn.Module, level: float, seed: int, settings: Any) -> None:
        """Prune ``model`` in place to ``level`` once (``seed`` fixes random choices)."""

    def prune(
        self, model: nn.Module, target: float, context: PruneContext, settings: Any
    ) -> SparsityReport:
        kept_now, kept_end = 1.0 - self.level(model), 1.0 - target
        steps, seed = context.steps, context.seed
        for i in range(1, steps + 1):
            level = target if i == steps else 1.0 - kept_now * (kept_end / kept_now) ** (i / steps)
            self.prune_once(model, max(level, 0.0), seed + i, settings)
            fn, _ = context.trainer(seed + i, f"retrain {self.name} {level:.4f}")
            if fn is not None:
                fn(model, None)
        return sparsity_report(model)
