"""Dynamic Network Surgery (Guo, Yao & Chen, NIPS 2016): pruning *and* splicing.

DNS keeps the dense weights ``W`` (``weight_orig``) and trains all of them;
the forward pass uses ``W * T`` with a 0/1 mask ``T`` (``weight_mask``) and
the gradient of the loss with respect to ``W * T`` is applied to every entry
of ``W`` (straight-through: pruned weights keep learning, so they can come
back). During training the mask of each layer is re-derived from two
thresholds ``a < b`` on ``|W|``:

- ``T = 0`` where ``|W| < a`` (cut), ``T = 1`` where ``|W| > b`` (spliced back),
  and weights in between keep their state (hysteresis);
- ``a = (1 - h) t`` and ``b = (1 + h) t`` around a centre ``t`` taken from the
  layer's current ``|W|`` distribution: the ``|W|`` quantile at the layer's
  scheduled rate (the DNS code uses ``mean + c * std`` with a hand-tuned ``c``
  per layer; a quantile picks that ``c`` from the requested sparsity);
- the scheduled rate ramps from the starting sparsity to the target (cubic,
  over ``ramp`` of the training steps; ``ramp=0`` jumps at once as DNS does);
- the masks are updated after a step with probability
  ``(1 + gamma * step) ** -power`` (the DNS schedule), drawn from a seeded
  generator.

Per-layer targets: with ``allocation="global"`` the per-layer counts are those
of one global |W| threshold on the starting weights at the target sparsity
(large, information-poor layers such as LeNet's first FC layer lose most, as
in DNS's hand-tuned rates); ``"layer"`` gives every layer the same rate.

Calibration (to hit the requested sparsity exactly): after training, each
layer keeps exactly ``n - k`` weights, ``k`` its integer target count (the
counts sum to ``round(s * N)``). The layer's weights are ranked by (current
mask state, |W|): if the surgery left too many weights alive the
smallest-|W| live ones are cut, if too few the largest-|W| cut ones are
spliced back; nothing else changes. An optional fine-tune with the mask fixed
(``finetune_epochs``) follows. The dense ``W`` stays in ``weight_orig`` so a
later DNS run (the next sparsity level) can still splice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sparserobust.errors import ConfigError
from sparserobust.pruning.base import PruneContext, PruningMethod, TrainFn, make_trainer
from sparserobust.pruning.magnitude import global_counts, layer_counts
from sparserobust.pruning.masks import (
    SparsityReport,
    check_sparsity,
    dense_weight,
    is_masked,
    prunable_layers,
    set_weight_mask,
    sparsity_report,
    weight_mask,
)
from sparserobust.training import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DNSConfig:
    """Hyperparameters of :func:`dns_prune` (see the module docstring).

    ``hysteresis`` h sets a=(1-h)t, b=(1+h)t; ``gamma``/``power`` the mask
    update probability (1+gamma*step)^-power; ``ramp`` the fraction of the
    surgery steps over which the rate rises to the target; ``allocation``
    ``global`` or ``layer``; ``finetune_epochs`` epochs with the calibrated mask
    fixed (only used when training comes as a TrainConfig).
    """

    hysteresis: float = 0.1
    gamma: float = 1e-4
    power: float = 1.0
    ramp: float = 0.5
    allocation: str = "global"
    finetune_epochs: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.hysteresis < 1:
            raise ConfigError(f"DNS hysteresis must be in [0, 1), got {self.hysteresis}")
        if self.gamma < 0 or self.power < 0:
            raise ConfigError("DNS gamma and power must be >= 0")
        if not 0 <= self.ramp <= 1:
            raise ConfigError(f"DNS ramp must be a fraction in [0, 1], got {self.ramp}")
        if self.allocation not in ("global", "layer"):
            raise ConfigError(
                f"DNS allocation must be 'global' or 'layer', got {self.allocation!r}"
            )
        if self.finetune_epochs < 0:
            raise ConfigError(f"DNS finetune epochs must be >= 0, got {self.finetune_epochs}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _StraightThroughMask(torch.autograd.Function):
    """``W * T`` forward; the incoming gradient passes to all of ``W`` unmasked."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


def _straight_through_hook(module: nn.Module, _inputs: Any) -> None:
    module.weight = _StraightThroughMask.apply(dense_weight(module), weight_mask(module))


@contextlib.contextmanager
def straight_through(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every masked layer computes ``W * T`` with a
    straight-through gradient to all of ``W``; ``prune``'s usual masked
    gradient comes back afterwards. The hook runs after ``prune``'s own."""
    handles: list[RemovableHandle] = []
    try:
        for _, module in prunable_layers(model):
            if is_masked(module):
                handles.append(module.register_forward_pre_hook(_straight_through_hook))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        from sparserobust.pruning.masks import refresh_pruned_weights

        refresh_pruned_weights(model)


def _kth_smallest(values: torch.Tensor, k: int) -> float:
    """The k-th smallest entry (1-based) of ``values``; -inf for k = 0."""
    if k <= 0:
        return -math.inf
    return float(torch.kthvalue(values.flatten().float().cpu(), min(k, values.numel())).values)


class SurgeryHook:
    """The after-step hook of DNS: re-derive masks from the a<b thresholds.

    ``start`` and ``target`` map layer names to pruned counts; ``ramp_steps``
    steps move the scheduled count from one to the other (cubic). Calling
    :meth:`update` applies the cut/splice rule once (used by tests too).
    """

    def __init__(
        self,
        model: nn.Module,
        start: dict[str, int],
        target: dict[str, int],
        config: DNSConfig,
        ramp_steps: int,
        seed: int,
    ) -> None:
        self.layers = dict(prunable_layers(model))
        self.start = start
        self.target = target
        self.config = config
        self.ramp_steps = max(0, int(ramp_steps))
        self.gen = torch.Generator().manual_seed(int(seed))
        self.updates = 0
        self.spliced = 0

    def scheduled(self, step: int) -> dict[str, int]:
        """Pruned count per layer at ``step`` (after the ramp: the target)."""
        if self.ramp_steps == 0 or step >= self.ramp_steps:
            return dict(self.target)
        frac = 1.0 - (1.0 - step / self.ramp_steps) ** 3
        return {
            n: int(round(self.start[n] + (self.target[n] - self.start[n]) * frac))
            for n in self.target
        }

    def probability(self, step: int) -> float:
        """Chance of a mask update after ``step`` (always 1 during the ramp)."""
        if step <= self.ramp_steps:
            return 1.0
        return float((1.0 + self.config.gamma * step) ** (-self.config.power))

    @torch.no_grad()
    def update(self, counts: dict[str, int]) -> None:
        """Cut |W| < a, splice |W| > b, keep the rest, with t the |W| quantile at ``counts``."""
        h = self.config.hysteresis
        for name, k in counts.items():
            module = self.layers[name]
            magnitude = dense_weight(module).detach().abs()
            centre = _kth_smallest(magnitude, k)
            mask = weight_mask(module).clone()
            if math.isinf(centre):
                mask.fill_(1.0)
            else:
                low, high = (1 - h) * centre, (1 + h) * centre
                before = mask.clone()
                mask[magnitude <= low] = 0.0
                mask[magnitude > high] = 1.0
                self.spliced += int(((before == 0) & (mask == 1)).sum())
            weight_mask(module).copy_(mask)
        self.updates += 1

    def __call__(self, step: int, model: nn.Module) -> None:
        draw = float(torch.rand((), generator=self.gen))
        if draw < self.probability(step):
            self.update(self.scheduled(step))


@torch.no_grad()
def calibrate(model: nn.Module, counts: dict[str, int]) -> int:
    """Make each named layer's pruned count exactly ``counts[name]``.

    Ranks weights by (mask state, |W|): too many alive -> cut the smallest-|W|
    live weights; too few -> splice back the largest-|W| cut ones. Returns
    how many mask entries changed.
    """
    changed = 0
    layers = dict(prunable_layers(model))
    for name, k in counts.items():
        module = layers[name]
        magnitude = dense_weight(module).detach().abs().flatten()
        mask = weight_mask(module).flatten()
        # rank by (mask state, |W|) exactly: two stable sorts, no float offset that could
        # merge nearly equal magnitudes
        order = torch.argsort(magnitude, stable=True)
        order = order[torch.argsort(mask[order], stable=True)]
        new = torch.ones_like(mask)
        if k > 0:
            new[order[:k]] = 0.0
        changed += int((new != mask).sum())
        set_weight_mask(module, new.reshape(dense_weight(module).shape))
    return changed


def dns_counts(model: nn.Module, sparsity: float, allocation: str) -> dict[str, int]:
    """Target pruned count per layer: global |W| threshold or one rate per layer."""
    if allocation == "layer":
        return layer_counts(model, sparsity)
    scores = {n: dense_weight(m).detach().abs() for n, m in prunable_layers(model)}
    return global_counts(model, sparsity, scores)


def dns_prune(
    model: nn.Module,
    sparsity: float,
    train: TrainFn,
    *,
    steps: int,
    config: DNSConfig | None = None,
    seed: int = 0,
    finetune: TrainFn | None = None,
) -> SparsityReport:
    """Prune ``model`` in place to ``sparsity`` by Dynamic Network Surgery.

    ``train(model, after_step)`` runs the surgery training (it must call
    ``after_step(step, model)`` after each optimiser step, as
    :func:`sparserobust.training.train_model` does); ``steps`` is how many
    steps it will take (for the ramp). Then the masks are calibrated to the
    exact count and ``finetune(model, None)``, if given, trains with them fixed.
    Returns the exact counts.
    """
    config = config or DNSConfig()
    check_sparsity(sparsity)
    for _, module in prunable_layers(model):
        if not is_masked(module):
            set_weight_mask(module, torch.ones_like(dense_weight(module)))
    target = dns_counts(model, sparsity, config.allocation)
    start = {n: int((weight_mask(m) == 0).sum()) for n, m in prunable_layers(model)}
    hook = SurgeryHook(model, start, target, config, int(config.ramp * steps), seed)
    with straight_through(model):
        train(model, hook)
    changed = calibrate(model, target)
    log.info(
        "dns: %d mask updates, %d splices, calibration changed %d entries",
        hook.updates,
        hook.spliced,
        changed,
    )
    if finetune is not None:
        finetune(model, None)
    report = sparsity_report(model)
    log.info("dns: sparsity %.4f (%d/%d)", report.sparsity, report.pruned, report.total)
    return report


class DNSMethod(PruningMethod):
    """``dns``: :func:`dns_prune`. It prunes while it trains: ``context.retrain`` is its
    surgery training (with a callable, ``context.retrain_steps`` its number of optimiser
    steps, for the ramp), and a TrainConfig recipe also fine-tunes
    ``settings.finetune_epochs`` with the final mask."""

    name = "dns"
    description = "Dynamic Network Surgery (Guo et al. 2016): pruning and splicing"
    settings_type = DNSConfig
    trains_while_pruning = True

    def prune(
        self, model: nn.Module, target: float, context: PruneContext, settings: DNSConfig
    ) -> SparsityReport:
        fn, steps = context.trainer(context.seed, f"dns {target:.4f}")
        if fn is None:
            raise ConfigError(
                "dns prunes while it trains: give retrain epochs >= 1 (a TrainConfig with the "
                "training split, or a training callable)"
            )
        finetune = None
        retrain = context.retrain
        if isinstance(retrain, TrainConfig) and settings.finetune_epochs > 0:
            recipe = dataclasses.replace(retrain, epochs=settings.finetune_epochs)
            finetune, _ = make_trainer(
                recipe, context.train, context.seed + 7919, context.progress, "dns finetune"
            )
        return dns_prune(
            model,
            target,
            fn,
            steps=steps if steps is not None else int(context.retrain_steps or 0),
            config=settings,
            seed=context.seed,
            finetune=finetune,
        )

    def sweep_identity(self, settings: DNSConfig) -> dict[str, Any]:
        return {"dns": settings.as_dict()}
