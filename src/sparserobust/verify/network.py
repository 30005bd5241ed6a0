"""A model parsed into the layers that the verifiers propagate bounds through.

Supported models: ``nn.Sequential`` (nested allowed) of :class:`Normalize`,
``nn.Linear``, ``nn.Conv2d``, ``nn.ReLU``, ``nn.Flatten``, ``nn.MaxPool2d``
(no padding, dilation 1), ``nn.AvgPool2d`` / ``nn.AdaptiveAvgPool2d`` (parsed as a
depthwise convolution with weights ``1/k``: windows that tile the input, no
``ceil_mode``), eval-mode ``nn.BatchNorm1d/2d``, ``nn.Identity``, ``nn.Dropout``,
residual blocks (:class:`~sparserobust.models.common.Residual` and ResNet's
:class:`~sparserobust.models.resnet.BasicBlock`), and the project's
:class:`~sparserobust.models.resnet.ResNetCifar` (``resnet32``), read as
normalize, conv, bn, relu, blocks, pool, flatten, fc.

Pruned layers are read through their effective weight ``weight_orig * weight_mask``.
A per-channel affine op (Normalize, BatchNorm) in front of a Linear or padding-free
Conv2d is folded into it; elsewhere (BatchNorm after a convolution, a Normalize in
front of a padded one) it stays a layer of kind ``affine``.

A residual block ``branch(x) + shortcut(x)`` is parsed into the flat layer list as a
``fork`` layer (the identity; it marks where ``x`` is kept), the branch's layers, and
an ``add`` layer whose ``shortcut`` is the list of the shortcut's (linear) layers,
empty for the identity; ResNet's option-A shortcut (subsample and zero-pad channels)
is a fixed 1x1 strided convolution. Both layers' ``source`` is the fork's index. The
bounds carry the kept value across the branch: IBP adds the shortcut's interval at
the ``add`` (``interval_forward``'s ``saved``), CROWN's backward pass sends the
coefficients at the ``add`` down the shortcut as well and adds them back at the
``fork`` (``backward_layer``'s ``pending``). Every other layer keeps one index, so the
bounds of a ReLU inside a branch are keyed like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.errors import ModelError
from sparserobust.models.common import Normalize, Residual
from sparserobust.models.resnet import BasicBlock, ResNetCifar
from sparserobust.pruning.masks import effective_weight
from sparserobust.utils import model_device

__all__ = ["Layer", "parse_network", "window_index"]


@dataclass
class Layer:
    """One op of a parsed network, with its parameters as plain tensors.

    ``kind`` is ``affine`` (per-channel ``x * scale + shift``: Normalize and
    eval-mode BatchNorm), ``linear``, ``conv`` (average pooling included), ``flatten``,
    ``relu``, ``maxpool``, ``fork`` or ``add`` (a residual block: see the module's
    docstring; ``source`` is the fork's index, ``shortcut`` the add's shortcut layers).
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
    source: int = -1
    shortcut: list[Layer] | None = None

    @property
    def nonlinear(self) -> bool:
        """True for ReLU and max-pool (the layers that need input bounds)."""
        return self.kind in ("relu", "maxpool")

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A ``(C,)`` per-channel vector shaped to broadcast over ``in_shape``."""
        return v.view(-1, *([1] * (len(self.in_shape) - 1)))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unsupported(name: str, module: nn.Module, why: str = "") -> ModelError:
    return ModelError(
        f"certify cannot bound {type(module).__name__} at {name or 'the top level'}{why}: "
        "use an nn.Sequential of Normalize, Linear, Conv2d, BatchNorm, ReLU, Flatten, "
        "MaxPool2d, AvgPool2d and Residual blocks"
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
        b = t(module.bias) if module.bias is not None else w.new_zeros(w.shape[0])
        if len(shape) != 1 or shape[0] != w.shape[1]:
            raise _unsupported(name, module, f" on inputs of shape {shape}")
        return Layer("linear", name, shape, (w.shape[0],), w, b)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _unsupported(name, module, " with non-zero or string padding mode")
        w = t(effective_weight(module))
        b = t(module.bias) if module.bias is not None else w.new_zeros(w.shape[0])
        return _conv_layer(
            name, shape, w, b, _pair(module.stride), _pair(module.padding),
            _pair(module.dilation), module.groups,
        )  # fmt: skip
    if isinstance(module, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        return _avgpool_layer(name, module, shape, dtype, device)
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
        out = F.max_pool2d(torch.zeros(1, *shape, dtype=dtype, device=device), kernel, stride)
        return Layer("maxpool", name, shape, tuple(out.shape[1:]), kernel=kernel, stride=stride)
    raise _unsupported(name, module)


def _conv_layer(
    name: str, shape: tuple[int, ...], w: torch.Tensor, b: torch.Tensor, stride: tuple[int, int],
    padding: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1,
) -> Layer:  # fmt: skip
    if len(shape) != 3:
        raise ModelError(f"the convolution {name} needs (C, H, W) inputs, got shape {shape}")
    if shape[1:] == (1, 1):
        # on a 1x1 input making a 1x1 output only the tap over the pixel reads anything
        # (a small-input VGG's deep 3x3 convs): the same map with a 1x1 kernel, nine
        # times cheaper to bound
        out = F.conv2d(torch.zeros(1, *shape, dtype=w.dtype, device=w.device), w, None,
                       stride, padding, dilation, groups)  # fmt: skip
        if tuple(out.shape[2:]) == (1, 1):
            th, tw = (p // d if p % d == 0 else k for p, d, k in
                      zip(padding, dilation, w.shape[2:], strict=True))  # fmt: skip
            if th < w.shape[2] and tw < w.shape[3]:
                w = w[:, :, th : th + 1, tw : tw + 1].contiguous()
            else:
                w = torch.zeros_like(w[:, :, :1, :1])
            stride, padding, dilation = (1, 1), (0, 0), (1, 1)
    layer = Layer("conv", name, shape, shape, w, b, stride=stride, padding=padding,
                  dilation=dilation, groups=groups)  # fmt: skip
    out = F.conv2d(torch.zeros(1, *shape, dtype=w.dtype, device=w.device), w, None,
                   stride, padding, dilation, groups)  # fmt: skip
    layer.out_shape = tuple(out.shape[1:])
    return layer


def _avgpool_layer(
    name: str, module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Layer:
    """Average pooling as a depthwise convolution with weights ``1 / (kh * kw)``."""
    if len(shape) != 3:
        raise _unsupported(name, module, f" on inputs of shape {shape}")
    c, h, w = shape
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        sizes = (size, size) if isinstance(size, int) or size is None else tuple(size)
        oh, ow = sizes[0] or h, sizes[1] or w
        if h % oh or w % ow:
            raise _unsupported(name, module, f" whose windows do not tile a {h}x{w} input")
        kernel, stride, padding = (h // oh, w // ow), (h // oh, w // ow), (0, 0)
    else:
        assert isinstance(module, nn.AvgPool2d)
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride else module.kernel_size)
        padding = _pair(module.padding)
        if (
            module.ceil_mode
            or module.divisor_override is not None
            or (padding != (0, 0) and not module.count_include_pad)
        ):
            raise _unsupported(name, module, " with ceil_mode, divisor_override or "
                               "count_include_pad=False")  # fmt: skip
    weight = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=dtype, device=device)
    bias = torch.zeros(c, dtype=dtype, device=device)
    return _conv_layer(name, shape, weight, bias, stride, padding, groups=c)


def _option_a_shortcut(
    name: str, block: BasicBlock, shape: tuple[int, ...], dtype: torch.dtype,
    device: torch.device,
) -> list[Layer]:  # fmt: skip
    """ResNet's parameter-free shortcut (subsample, zero-pad the channels) as a fixed 1x1
    convolution; the identity (no layer) when it neither subsamples nor pads."""
    if block.stride == 1 and block.pad == 0:
        return []
    cin = shape[0]
    half = block.pad // 2
    w = torch.zeros(cin + block.pad, cin, 1, 1, dtype=dtype, device=device)
    w[half + torch.arange(cin, device=device), torch.arange(cin, device=device)] = 1.0
    b = torch.zeros(cin + block.pad, dtype=dtype, device=device)
    return [_conv_layer(f"{name}.shortcut", shape, w, b, (block.stride, block.stride), (0, 0))]


def _parse(
    name: str, module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> list[Layer]:
    """``module``'s ops as layers, recursing into containers and residual blocks."""
    prefix = f"{name}." if name else ""

    def seq(children: Sequence[tuple[str, nn.Module]], shp: tuple[int, ...]) -> list[Layer]:
        out: list[Layer] = []
        for child_name, child in children:
            out += _parse(prefix + child_name, child, shp, dtype, device)
            shp = out[-1].out_shape if out else shp
        return out

    if isinstance(module, nn.Sequential):
        return seq(list(module.named_children()), shape)
    if isinstance(module, ResNetCifar):
        parts = [(n, getattr(module, n)) for n in ("normalize", "conv", "bn", "relu", "blocks",
                                                    "pool")]  # fmt: skip
        return seq([*parts, ("flatten", nn.Flatten()), ("fc", module.fc)], shape)
    if isinstance(module, BasicBlock | Residual):
        if isinstance(module, BasicBlock):
            names = ("conv1", "bn1", "relu1", "conv2", "bn2")
            branch = seq([(n, getattr(module, n)) for n in names], shape)
            shortcut = _option_a_shortcut(name, module, shape, dtype, device)
        else:
            branch = seq([("branch", module.branch)], shape)
            shortcut = _parse(prefix + "shortcut", module.shortcut, shape, dtype, device)
        if any(layer.kind not in ("affine", "linear", "conv", "flatten") for layer in shortcut):
            raise _unsupported(name, module, " with a nonlinear or residual shortcut")
        main_shape = branch[-1].out_shape if branch else shape
        short_shape = shortcut[-1].out_shape if shortcut else shape
        if main_shape != short_shape:
            raise _unsupported(name, module, f": branch {main_shape} vs shortcut {short_shape}")
        fork = Layer("fork", f"{prefix}fork", shape, shape)
        add = Layer("add", f"{prefix}add", main_shape, main_shape, shortcut=shortcut)
        tail = seq([("relu2", module.relu2)], main_shape) if isinstance(module, BasicBlock) else []
        return [fork, *branch, add, *tail]
    layer = _layer_of(name, module, shape, dtype, device)
    return [] if layer is None else [layer]


def _link_residuals(layers: list[Layer]) -> list[Layer]:
    """Set every fork's and add's ``source`` to the fork's index in ``layers``."""
    open_forks: list[int] = []
    for i, layer in enumerate(layers):
        if layer.kind == "fork":
            layer.source = i
            open_forks.append(i)
        elif layer.kind == "add":
            layer.source = open_forks.pop()
    return layers


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
    """The ops of ``model`` (an ``nn.Sequential`` or ``resnet32``'s ResNetCifar) as
    :class:`Layer` records, residual blocks flattened into ``fork`` ... ``add``.

    ``input_shape``: one input's shape, e.g. ``(1, 28, 28)``. Weights are the
    effective (masked) weights in ``dtype``; a Normalize in front of a Linear or
    padding-free Conv2d is folded into it. Raises :class:`ModelError` for ops
    that have no bound rule here.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    if not isinstance(model, nn.Sequential | ResNetCifar):
        raise _unsupported("", model)
    shape = tuple(int(s) for s in input_shape)
    layers = _parse("", model, shape, dtype, dev)
    shape = layers[-1].out_shape if layers else shape
    if len(shape) != 1:
        raise ModelError(f"the model ends with shape {shape}, not logits (N, classes)")
    return _link_residuals(_fold_affine(layers))


def window_index(layer: Layer, device: torch.device) -> torch.Tensor:
    """``(K, L)``: flat input position of offset ``k`` in pooling window ``l``."""
    _, h, w = layer.in_shape
    pos = torch.arange(h * w, dtype=torch.float64, device=device).view(1, 1, h, w)
    return F.unfold(pos, layer.kernel, stride=layer.stride)[0].round().long()
