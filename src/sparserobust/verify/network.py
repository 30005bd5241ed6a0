"""A model parsed into the layers that the verifiers propagate bounds through.

Supported models: ``nn.Sequential`` (nested allowed) of :class:`Normalize`,
``nn.Linear``, ``nn.Conv2d``, ``nn.ReLU``, ``nn.Flatten``, ``nn.MaxPool2d``
(no padding, dilation 1), eval-mode ``nn.BatchNorm1d/2d``, ``nn.Identity`` and
``nn.Dropout``. Pruned layers are read through their effective weight
``weight_orig * weight_mask``. A per-channel affine op (Normalize, BatchNorm) in front
of a Linear or padding-free Conv2d is folded into it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.errors import ModelError
from sparserobust.models.common import Normalize
from sparserobust.pruning.masks import effective_weight
from sparserobust.utils import model_device

__all__ = ["Layer", "parse_network", "window_index"]


@dataclass
class Layer:
    """One op of a parsed network, with its parameters as plain tensors.

    ``kind`` is ``affine`` (per-channel ``x * scale + shift``: Normalize and
    eval-mode BatchNorm), ``linear``, ``conv``, ``flatten``, ``relu`` or ``maxpool``.
    ``in_shape``/``out_shape`` are per-sample shapes. ``weight``/``bias``: Linear
    ``(out, in)``/``(out,)``, Conv2d ``(O, I, kh, kw)``/``(O,)``, affine ``scale``/
    ``shift`` ``(C,)``. ``stride``/``padding``/``dilation``/``groups`` for conv,
    ``kernel``/``stride`` for maxpool. ``name``: the module's name in the model.
    """

    kind: str
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def nonlinear(self) -> bool:
        """True for ReLU and max-pool (the layers that need input bounds)."""
        return self.kind in ("relu", "maxpool")

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A ``(C,)`` per-channel vector shaped to broadcast over ``in_shape``."""
        return v.view(-1, *([1] * (len(self.in_shape) - 1)))


def _modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            out += _modules(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), model)]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unsupported(name: str, module: nn.Module, why: str = "") -> ModelError:
    return ModelError(
        f"certify cannot bound {type(module).__name__} at {name or 'the top level'}{why}: "
        "use an nn.Sequential of Normalize, Linear, Conv2d, ReLU, Flatten, MaxPool2d"
    )


@torch.no_grad()
def _layer_of(
    name: str, module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Layer | None:
    def t(v: torch.Tensor) -> torch.Tensor:
        return v.detach().to(device=device, dtype=dtype)

    if isinstance(module, nn.Identity | nn.Dropout):
        return None
    if isinstance(module, Normalize):
        std = t(module.std).flatten()
        scale = 1.0 / std
        shift = -t(module.mean).flatten() / std
        return Layer("affine", name, shape, shape, scale.expand(shape[0]), shift.expand(shape[0]))
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            raise _unsupported(name, module, " without running statistics")
        scale = 1.0 / torch.sqrt(t(module.running_var) + module.eps)
        shift = -t(module.running_mean) * scale
        if module.affine:
            scale, shift = scale * t(module.weight), shift * t(module.weight) + t(module.bias)
        return Layer("affine", name, shape, shape, scale, shift)
    if isinstance(module, nn.Linear):
        w = t(effective_weight(module))
        b = t(module.bias) if module.bias is not None else torch.zeros(w.shape[0], dtype=dtype)
        if len(shape) != 1 or shape[0] != w.shape[1]:
            raise _unsupported(name, module, f" on inputs of shape {shape}")
        return Layer("linear", name, shape, (w.shape[0],), w, b.to(device))
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _unsupported(name, module, " with non-zero or string padding mode")
        w = t(effective_weight(module))
        b = t(module.bias) if module.bias is not None else torch.zeros(w.shape[0], dtype=dtype)
        layer = Layer(
            "conv", name, shape, shape, w, b.to(device), stride=_pair(module.stride),
            padding=_pair(module.padding), dilation=_pair(module.dilation), groups=module.groups,
        )  # fmt: skip
        out = F.conv2d(torch.zeros(1, *shape, dtype=dtype, device=device), w, None,
                       layer.stride, layer.padding, layer.dilation, layer.groups)  # fmt: skip
        layer.out_shape = tuple(out.shape[1:])
        return layer
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported(name, module, " other than Flatten(1, -1)")
        return Layer("flatten", name, shape, (math.prod(shape),))
    if isinstance(module, nn.ReLU):
        return Layer("relu", name, shape, shape)
    if isinstance(module, nn.MaxPool2d):
        if (
            _pair(module.padding) != (0, 0)
            or _pair(module.dilation) != (1, 1)
            or module.ceil_mode
            or module.return_indices
        ):
            raise _unsupported(name, module, " with padding, dilation or ceil_mode")
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        out = F.max_pool2d(torch.zeros(1, *shape, dtype=dtype), kernel, stride)
        return Layer("maxpool", name, shape, tuple(out.shape[1:]), kernel=kernel, stride=stride)
    raise _unsupported(name, module)


def _fold_affine(layers: list[Layer]) -> list[Layer]:
    """Merge a per-channel affine op into the next Linear (through Flatten) or
    padding-free Conv2d: the same function with one op fewer to propagate."""
    out: list[Layer] = []
    i = 0
    while i < len(layers):
        a = layers[i]
        if a.kind == "affine" and a.weight is not None and a.bias is not None:
            j = i + 1 if i + 1 < len(layers) and layers[i + 1].kind == "flatten" else i
            nxt = layers[j + 1] if j + 1 < len(layers) else None
            scale = a.channel_view(a.weight).expand(a.in_shape)
            shift = a.channel_view(a.bias).expand(a.in_shape)
            if nxt is not None and nxt.kind == "linear" and nxt.weight is not None:
                w = nxt.weight * scale.reshape(1, -1)
                b = nxt.bias + nxt.weight @ shift.reshape(-1)  # type: ignore[operator]
                out += layers[i + 1 : j + 1]
                out.append(Layer("linear", nxt.name, nxt.in_shape, nxt.out_shape, w, b))
                i = j + 2
                continue
            if (
                nxt is not None
                and j == i
                and nxt.kind == "conv"
                and nxt.weight is not None
                and nxt.padding == (0, 0)
                and nxt.groups == 1
            ):
                w = nxt.weight * a.weight.view(1, -1, 1, 1)
                b = nxt.bias + (nxt.weight * a.bias.view(1, -1, 1, 1)).sum((1, 2, 3))  # type: ignore[operator]
                out.append(Layer(**{**nxt.__dict__, "weight": w, "bias": b}))
                i += 2
                continue
        out.append(a)
        i += 1
    return out


def parse_network(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> list[Layer]:
    """The ops of ``model`` (an ``nn.Sequential``) as :class:`Layer` records.

    ``input_shape``: one input's shape, e.g. ``(1, 28, 28)``. Weights are the
    effective (masked) weights in ``dtype``; a Normalize in front of a Linear or
    padding-free Conv2d is folded into it. Raises :class:`ModelError` for ops
    that have no bound rule here.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    if not isinstance(model, nn.Sequential):
        raise _unsupported("", model)
    shape = tuple(int(s) for s in input_shape)
    layers: list[Layer] = []
    for name, module in _modules(model):
        layer = _layer_of(name, module, shape, dtype, dev)
        if layer is not None:
            layers.append(layer)
            shape = layer.out_shape
    if len(shape) != 1:
        raise ModelError(f"the model ends with shape {shape}, not logits (N, classes)")
    return _fold_affine(layers)


def window_index(layer: Layer, device: torch.device) -> torch.Tensor:
    """``(K, L)``: flat input position of offset ``k`` in pooling window ``l``."""
    _, h, w = layer.in_shape
    pos = torch.arange(h * w, dtype=torch.float64, device=device).view(1, 1, h, w)
    return F.unfold(pos, layer.kernel, stride=layer.stride)[0].round().long()
