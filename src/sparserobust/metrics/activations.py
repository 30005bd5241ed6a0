"""Fraction of active ReLUs per ReLU layer, measured with forward hooks on ``nn.ReLU``.

A unit is *active* on an input when its ReLU output is strictly positive, so
its slope is 1 and it passes gradient (the D_l pattern of PAPER.md's
``W1 D1 W2 D2 ...``). Only ``nn.ReLU`` modules are seen: a model that calls
``torch.relu`` / ``F.relu`` functionally has nothing to hook, and the result
says so instead of failing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.metrics.margin import check_metric_inputs
from sparserobust.utils import eval_mode, model_device

log = logging.getLogger(__name__)

__all__ = ["ActiveReLUs", "active_relu_fraction"]


@dataclass(frozen=True)
class ActiveReLUs:
    """Active-ReLU statistics of a model on a set of inputs.

    - ``layers``: ReLU module name (as in ``model.named_modules()``) ->
      fraction of (input, unit) pairs that are active, in [0, 1]. A module
      called several times per forward pass pools all its calls.
    - ``units``: module name -> number of units per input (all calls together).
    - ``dead``: module name -> fraction of units active on *no* input.
    - ``overall``: active (input, unit) pairs over all pairs of all layers
      (layers weighted by their unit count); ``nan`` without ReLU modules.
    - ``n_inputs``: number of inputs measured.
    - ``has_relu``: whether any ``nn.ReLU`` module was called;
      ``message`` explains an empty result (``None`` otherwise).
    """

    layers: dict[str, float]
    units: dict[str, int]
    dead: dict[str, float]
    overall: float
    n_inputs: int
    has_relu: bool
    message: str | None = field(default=None)

    def summary(self) -> dict[str, float]:
        """Flat record: ``active_overall`` and ``active/<layer>`` per layer."""
        out = {"active_overall": self.overall}
        out.update({f"active/{name}": frac for name, frac in self.layers.items()})
        return out


def active_relu_fraction(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000
) -> ActiveReLUs:
    """Fraction of active ReLU units per ``nn.ReLU`` layer and overall on inputs ``x``.

    ``x``: images in [0,1], shape ``(N, C, H, W)`` (moved to the model's
    device in batches of ``batch_size``). The model runs in eval mode (restored
    afterwards) under ``torch.no_grad``; hooks are removed afterwards.
    Returns :class:`ActiveReLUs`; a model without ``nn.ReLU`` modules gives
    ``has_relu=False``, empty dicts, ``overall=nan`` and a ``message``.
    """
    check_metric_inputs(x)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    relus = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ReLU)]
    if not relus:
        msg = "model has no nn.ReLU modules (functional relu calls cannot be hooked)"
        log.warning("active ReLUs: %s", msg)
        return ActiveReLUs({}, {}, {}, math.nan, int(x.shape[0]), False, msg)

    active: dict[str, int] = {}
    total: dict[str, int] = {}
    ever: dict[str, list[torch.Tensor]] = {}
    call_index: dict[str, int] = {}

    Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]

    def make_hook(name: str) -> Hook:
        def hook(_mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            pos = (out > 0).reshape(out.shape[0], -1)
            active[name] = active.get(name, 0) + int(pos.sum())
            total[name] = total.get(name, 0) + pos.numel()
            calls = ever.setdefault(name, [])
            k = call_index.get(name, 0)
            any_pos = pos.any(dim=0)
            if k < len(calls):
                calls[k] = calls[k] | any_pos
            else:
                calls.append(any_pos)
            call_index[name] = k + 1

        return hook

    device = model_device(model)
    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in relus]
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                call_index.clear()
                model(x[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()

    if not total:
        msg = "the model's nn.ReLU modules were never called in forward (functional relu?)"
        log.warning("active ReLUs: %s", msg)
        return ActiveReLUs({}, {}, {}, math.nan, int(x.shape[0]), False, msg)
    n = int(x.shape[0])
    layers = {name: active[name] / total[name] for name, _ in relus if name in total}
    units = {name: total[name] // n for name in layers}
    dead = {}
    for name in layers:
        alive = torch.cat(ever[name])
        dead[name] = float((~alive).float().mean())
    overall = sum(active.values()) / sum(total.values())
    log.info("active ReLUs on %d inputs: overall %.4f", n, overall)
    return ActiveReLUs(layers, units, dead, overall, n, True, None)
