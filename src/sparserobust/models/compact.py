"""Plain ``nn.Sequential`` models described as JSON layer lists (compact exports).

A physically smaller model made by :func:`sparserobust.pruning.structured.compact`
has layer sizes no registered architecture has, so its checkpoint stores the
architecture itself: a list of layer records (type and constructor arguments,
in order, with the child names). :func:`sequential_spec` writes that list for
a model, :func:`build_sequential` rebuilds the model (weights uninitialised
until a state dict is loaded). Supported layers: Normalize, Flatten, Linear,
Conv2d, ReLU, MaxPool2d, AvgPool2d, Dropout, Identity.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from sparserobust.errors import ModelError
from sparserobust.models.common import Normalize


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, tuple | list) else [int(value)] * 2


def _describe(module: nn.Module) -> dict[str, Any]:
    """The layer record of one supported module; ModelError otherwise."""
    if isinstance(module, Normalize):
        return {
            "type": "Normalize",
            "mean": module.mean.flatten().tolist(),
            "std": module.std.flatten().tolist(),
        }
    if isinstance(module, nn.Flatten):
        return {"type": "Flatten", "start_dim": module.start_dim, "end_dim": module.end_dim}
    if isinstance(module, nn.Linear):
        return {
            "type": "Linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ModelError(
                "only Conv2d layers with groups=1, zero padding and numeric padding can be "
                "exported as a compact model"
            )
        return {
            "type": "Conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": _pair(module.kernel_size),
            "stride": _pair(module.stride),
            "padding": _pair(module.padding),
            "dilation": _pair(module.dilation),
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.ReLU):
        return {"type": "ReLU"}
    if isinstance(module, nn.MaxPool2d):
        return {
            "type": "MaxPool2d",
            "kernel_size": _pair(module.kernel_size),
            "stride": _pair(module.stride),
            "padding": _pair(module.padding),
            "dilation": _pair(module.dilation),
            "ceil_mode": bool(module.ceil_mode),
        }
    if isinstance(module, nn.AvgPool2d):
        return {
            "type": "AvgPool2d",
            "kernel_size": _pair(module.kernel_size),
            "stride": _pair(module.stride),
            "padding": _pair(module.padding),
            "ceil_mode": bool(module.ceil_mode),
            "count_include_pad": bool(module.count_include_pad),
        }
    if isinstance(module, nn.Dropout):
        return {"type": "Dropout", "p": float(module.p)}
    if isinstance(module, nn.Identity):
        return {"type": "Identity"}
    raise ModelError(
        f"layer type {type(module).__name__} cannot be described as a compact layer: "
        "compact export supports Sequential models of Linear/Conv2d/ReLU/pooling/Flatten "
        "layers (lenet300, lenet5, linear)"
    )


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "Normalize": lambda r: Normalize(r["mean"], r["std"]),
    "Flatten": lambda r: nn.Flatten(r["start_dim"], r["end_dim"]),
    "Linear": lambda r: nn.Linear(r["in_features"], r["out_features"], bias=r["bias"]),
    "Conv2d": lambda r: nn.Conv2d(
        r["in_channels"],
        r["out_channels"],
        tuple(r["kernel_size"]),
        stride=tuple(r["stride"]),
        padding=tuple(r["padding"]),
        dilation=tuple(r["dilation"]),
        bias=r["bias"],
    ),
    "ReLU": lambda r: nn.ReLU(),
    "MaxPool2d": lambda r: nn.MaxPool2d(
        tuple(r["kernel_size"]),
        stride=tuple(r["stride"]),
        padding=tuple(r["padding"]),
        dilation=tuple(r["dilation"]),
        ceil_mode=r["ceil_mode"],
    ),
    "AvgPool2d": lambda r: nn.AvgPool2d(
        tuple(r["kernel_size"]),
        stride=tuple(r["stride"]),
        padding=tuple(r["padding"]),
        ceil_mode=r["ceil_mode"],
        count_include_pad=r["count_include_pad"],
    ),
    "Dropout": lambda r: nn.Dropout(r["p"]),
    "Identity": lambda r: nn.Identity(),
}


def sequential_spec(model: nn.Module) -> list[dict[str, Any]]:
    """The layer records of a flat ``nn.Sequential`` (each with its child ``name``)."""
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"compact export needs an nn.Sequential model, got {type(model).__name__}")
    return [{"name": name, **_describe(child)} for name, child in model.named_children()]


def build_sequential(spec: Sequence[Mapping[str, Any]]) -> nn.Sequential:
    """Rebuild the ``nn.Sequential`` that :func:`sequential_spec` described."""
    children: OrderedDict[str, nn.Module] = OrderedDict()
    try:
        for i, record in enumerate(spec):
            kind = record["type"]
            if kind not in _BUILDERS:
                raise ModelError(
                    f"unknown compact layer type {kind!r}: choose from {', '.join(_BUILDERS)}"
                )
            children[str(record.get("name", i))] = _BUILDERS[kind](record)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"corrupt compact layer list ({type(exc).__name__}: {exc})") from None
    return nn.Sequential(children)
