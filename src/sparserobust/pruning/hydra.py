"""HYDRA (Sehwag, Wang, Mittal & Jana, NeurIPS 2020): pruning by learned importance scores.

HYDRA keeps, in every Linear/Conv layer, the fraction ``k`` of weights with the
highest importance score ``|s|`` (``k`` = fraction of weights KEPT, so the
layer's sparsity is ``1 - k``). Three stages:

1. **Score initialisation** proportional to the weight magnitudes, scaled like
   a Kaiming-uniform init: ``s = sqrt(6 / fan_in) * w / max|w|`` per layer
   (HYDRA's "scaled score init"; at the start the top-k of ``|s|`` is exactly
   layer-wise magnitude pruning).
2. **Score optimisation** with the weights (and biases) frozen: the forward pass
   uses ``w * m`` with ``m`` the 0/1 top-k mask of ``|s|``; the gradient
   reaches ``s`` straight through the top-k (as if ``m`` were ``|s|``), so
   ``dL/ds = dL/d(w*m) * w * sign(s)``. The loss is the training loss of the
   given :class:`~sparserobust.training.TrainConfig`: adversarial (PGD-AT or
   TRADES) when ``adversarial`` is set, as in HYDRA, else cross-entropy.
   HYDRA's defaults: SGD lr 0.1, cosine, weight decay 1e-4 on the scores.
3. **Fine-tuning** of the kept weights with the final mask fixed (HYDRA: lr
   0.01), under the same loss.

The final mask is an ordinary ``torch.nn.utils.prune`` custom mask and the
scores are discarded, so a HYDRA model saves and loads like any pruned
checkpoint. Per-layer counts are exact: a layer of ``n`` weights keeps
``n - round((1 - k) * n)``, the count layer-wise magnitude pruning keeps at
sparsity ``1 - k`` (round half up), so the two compare weight for weight.
Weights already pruned (a chained sweep) stay pruned: they rank below every
live weight. Pruned entries of ``weight_orig`` are set to exactly 0.

Reference code: github.com/inspire-group/hydra (read, not copied).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sparserobust.data import Split
from sparserobust.errors import ConfigError
from sparserobust.pruning.base import PruneContext, PruningMethod
from sparserobust.pruning.magnitude import _check_not_unpruning, layer_counts, mask_smallest
from sparserobust.pruning.masks import (
    SparsityReport,
    dense_weight,
    is_masked,
    prunable_layers,
    refresh_pruned_weights,
    set_weight_mask,
    sparsity_report,
    weight_mask,
    zero_pruned_weights,
)
from sparserobust.training import AdversarialTraining, TrainConfig, train_model

log = logging.getLogger(__name__)

SCORES = "hydra_scores"
"""Name of the temporary score parameter registered on each layer during stage 2."""


@dataclass(frozen=True)
class HydraSettings:
    """Settings of :func:`hydra_prune` (HYDRA's own defaults where they exist).

    * ``score_epochs``: epochs of score optimisation (HYDRA: 20 on CIFAR-10).
    * ``score_lr``, ``score_weight_decay``: SGD on the scores (HYDRA: 0.1, 1e-4);
      momentum, batch size and schedule come from the training config.
    * ``finetune_epochs``: epochs of fine-tuning the kept weights (None: the
      training config's ``epochs``); its lr is the training config's (HYDRA: 0.01).
    * ``adversarial``: the loss of both stages; None uses the training config's
      ``adversarial`` (None there too: natural cross-entropy).
    """

    score_epochs: int = 10
    score_lr: float = 0.1
    score_weight_decay: float = 1e-4
    finetune_epochs: int | None = None
    adversarial: AdversarialTraining | None = None

    def __post_init__(self) -> None:
        if isinstance(self.adversarial, Mapping):
            object.__setattr__(self, "adversarial", AdversarialTraining.from_dict(self.adversarial))
        if self.adversarial is not None and not isinstance(self.adversarial, AdversarialTraining):
            raise ConfigError("hydra adversarial must be adversarial training settings or None")
        if not _is_int(self.score_epochs) or self.score_epochs < 1:
            raise ConfigError(
                f"hydra score_epochs must be an integer >= 1, got {self.score_epochs!r}"
            )
        if not _is_number(self.score_lr) or self.score_lr <= 0:
            raise ConfigError(f"hydra score_lr must be a number > 0, got {self.score_lr!r}")
        if not _is_number(self.score_weight_decay) or self.score_weight_decay < 0:
            raise ConfigError(
                f"hydra score_weight_decay must be a number >= 0, got {self.score_weight_decay!r}"
            )
        if self.finetune_epochs is not None and (
            not _is_int(self.finetune_epochs) or self.finetune_epochs < 0
        ):
            raise ConfigError(
                f"hydra finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_keep(keep: float) -> float:
    """``keep`` (fraction of weights kept) as a float in (0, 1]; ConfigError otherwise."""
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise ConfigError(f"hydra k must be a number in (0, 1], got {keep!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(
            f"hydra k must be in (0, 1] (fraction of weights kept = 1 - sparsity), got {keep!r}"
        )
    return value


def hydra_counts(model: nn.Module, keep: float) -> dict[str, int]:
    """Weights to remove per layer when each keeps the fraction ``keep``:
    ``round((1 - keep) * n)`` (round half up), as magnitude pruning at sparsity 1 - keep."""
    return layer_counts(model, 1.0 - check_keep(keep))


def scaled_scores(module: nn.Module) -> torch.Tensor:
    """HYDRA's initial scores of a layer: ``sqrt(6 / fan_in) * w / max|w|``
    (``fan_in`` = weights per output unit); zeros for an all-zero layer."""
    weight = dense_weight(module).detach() * weight_mask(module)
    fan_in = weight[0].numel()
    peak = float(weight.abs().max()) if weight.numel() else 0.0
    if peak == 0.0:
        return torch.zeros_like(weight)
    return math.sqrt(6.0 / fan_in) * weight / peak


def _ranking(scores: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Flat ranking key: ``|s|``, with already pruned weights at -1 (they go first)."""
    key = scores.detach().abs().flatten().clone()
    key[weight_mask(module).flatten() == 0] = -1.0
    return key


class _StraightThrough(torch.autograd.Function):
    """Forward: the given 0/1 top-k ``mask`` of the scores. Backward: the incoming
    gradient passes to the scores unchanged."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return mask.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


def _topk_mask(module: nn.Module, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The layer's 0/1 mask removing the ``k`` lowest ``|s|``, recomputed only when
    the scores changed since the last forward pass (the inner attack steps of
    adversarial training reuse it)."""
    cached = module.__dict__.get("_hydra_cache")
    if cached is not None and cached[0] == scores._version:
        return cached[1]
    mask = mask_smallest(_ranking(scores, module), k).reshape(scores.shape)
    module.__dict__["_hydra_cache"] = (scores._version, mask)
    return mask


@contextlib.contextmanager
def score_mode(model: nn.Module, counts: dict[str, int]) -> Iterator[dict[str, nn.Parameter]]:
    """Inside the block only the scores train: each layer named in ``counts`` holds
    a parameter ``hydra_scores`` (initialised by :func:`scaled_scores`), every
    other parameter is frozen, and the forward pass uses ``w * topk(|s|)`` with a
    straight-through gradient. Yields the scores by layer name; afterwards the
    score parameters and hooks are removed and ``requires_grad`` flags restored.
    """
    layers = dict(prunable_layers(model))
    for name in counts:
        if not is_masked(layers[name]):
            set_weight_mask(layers[name], torch.ones_like(dense_weight(layers[name])))
    flags = {p: p.requires_grad for p in model.parameters()}
    handles: list[RemovableHandle] = []
    scores: dict[str, nn.Parameter] = {}

    def hook(module: nn.Module, _inputs: Any) -> None:
        s = getattr(module, SCORES)
        mask = _StraightThrough.apply(s.abs(), _topk_mask(module, s, module.__dict__["_hydra_k"]))
        module.weight = dense_weight(module).detach() * mask

    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, k in counts.items():
            module = layers[name]
            scores[name] = nn.Parameter(scaled_scores(module))
            module.register_parameter(SCORES, scores[name])
            module.__dict__["_hydra_k"] = k
            handles.append(module.register_forward_pre_hook(hook))
        yield scores
    finally:
        for handle in handles:
            handle.remove()
        for name in counts:
            module = layers[name]
            if SCORES in module._parameters:
                del module._parameters[SCORES]
            for attr in ("_hydra_k", "_hydra_cache"):
                module.__dict__.pop(attr, None)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        refresh_pruned_weights(model)


@torch.no_grad()
def apply_score_masks(
    model: nn.Module, scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]
) -> None:
    """Set each named layer's prune mask to remove its ``counts[name]`` lowest ``|s|``
    (already pruned weights first) and zero the pruned entries of ``weight_orig``."""
    layers = dict(prunable_layers(model))
    for name, k in counts.items():
        module = layers[name]
        mask = mask_smallest(_ranking(scores[name], module), k)
        set_weight_mask(module, mask.reshape(dense_weight(module).shape))
    zero_pruned_weights(model)


def hydra_prune(
    model: nn.Module,
    keep: float,
    train: Split,
    config: TrainConfig,
    settings: HydraSettings | None = None,
    *,
    progress: bool = False,
) -> SparsityReport:
    """Prune ``model`` in place by HYDRA so every Linear/Conv layer keeps the
    fraction ``keep`` (k) of its weights; returns the exact counts (sparsity 1 - k).

    ``config`` is the training recipe (batch size, momentum, schedule, seed and
    the fine-tuning lr and epochs); ``settings`` the score stage and the loss
    (see :class:`HydraSettings`). Stage 2 trains only the scores on ``train``,
    stage 3 fine-tunes the kept weights with the mask fixed.
    """
    settings = settings or HydraSettings()
    counts = hydra_counts(model, keep)
    _check_not_unpruning(model, counts, "hydra")
    adversarial = settings.adversarial if settings.adversarial is not None else config.adversarial
    score_config = dataclasses.replace(
        config,
        epochs=settings.score_epochs,
        lr=settings.score_lr,
        weight_decay=settings.score_weight_decay,
        adversarial=adversarial,
    )
    with score_mode(model, counts) as scores:
        train_model(model, train, score_config, progress=progress, desc="hydra scores")
        final = {name: s.detach().clone() for name, s in scores.items()}
    apply_score_masks(model, final, counts)
    epochs = config.epochs if settings.finetune_epochs is None else settings.finetune_epochs
    if epochs > 0:
        ft_config = dataclasses.replace(
            config, epochs=epochs, seed=config.seed + 7919, adversarial=adversarial
        )
        train_model(model, train, ft_config, progress=progress, desc="hydra finetune")
        zero_pruned_weights(model)  # also drops the autograd graph left in module.weight
    report = sparsity_report(model)
    log.info(
        "hydra: k %.4f, sparsity %.4f (%d/%d)", keep, report.sparsity, report.pruned, report.total
    )
    return report


class HydraMethod(PruningMethod):
    """``hydra``: :func:`hydra_prune` keeping ``1 - target`` of every layer. It prunes
    while it trains: ``context.retrain`` must be a TrainConfig (its fine-tuning recipe,
    seeded with ``context.seed`` on top) with the ``context.train`` split."""

    name = "hydra"
    description = (
        "HYDRA (Sehwag et al. 2020): per-weight scores learned under the (adversarial) "
        "training loss with weights frozen, top-k per layer, then fine-tuning"
    )
    settings_type = HydraSettings
    trains_while_pruning = True

    def prune(
        self, model: nn.Module, target: float, context: PruneContext, settings: HydraSettings
    ) -> SparsityReport:
        retrain, train = context.retrain, context.train
        if not isinstance(retrain, TrainConfig) or train is None:
            raise ConfigError(
                "hydra trains while it prunes: give retrain as a TrainConfig (its fine-tuning "
                "recipe) and the training split"
            )
        config = dataclasses.replace(retrain, seed=retrain.seed + context.seed)
        return hydra_prune(model, 1.0 - target, train, config, settings, progress=context.progress)

    def sweep_identity(self, settings: HydraSettings) -> dict[str, Any]:
        return {"hydra": settings.as_dict()}
