"""Model registry: name -> constructor plus the default training recipe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.models.lenet import lenet5, lenet300
from sparserobust.models.linear import linear
from sparserobust.models.resnet import resnet32
from sparserobust.models.vgg import vgg
from sparserobust.registry import lookup

Builder = Callable[[Sequence[int], int, Sequence[float], Sequence[float]], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its constructor and the training defaults of ``train``."""

    build: Builder
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    description: str


MODELS: dict[str, ModelSpec] = {
    "lenet300": ModelSpec(lenet300, 20, 0.05, 128, 1e-4, "LeNet-300-100 MLP"),
    "lenet5": ModelSpec(lenet5, 15, 0.05, 128, 5e-4, "LeNet-5, Caffe form"),
    "vgg": ModelSpec(vgg, 60, 0.05, 128, 5e-4, "VGG-16 with BatchNorm (CIFAR)"),
    "resnet32": ModelSpec(resnet32, 60, 0.1, 128, 1e-4, "ResNet-32 (CIFAR, He et al. 2016)"),
    "linear": ModelSpec(linear, 20, 0.05, 128, 0.0, "softmax regression"),
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ConfigError for an unknown name."""
    return lookup(MODELS, name, "model")


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (C,H,W) in [0,1].

    ``mean``/``std`` (per channel) are applied inside the model; they default to
    0 and 1 (no normalisation).
    """
    spec = model_spec(name)
    channels = int(input_shape[0])
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean/std need {channels} values, one per input channel")
    return spec.build(tuple(int(s) for s in input_shape), int(num_classes), mean, std)
