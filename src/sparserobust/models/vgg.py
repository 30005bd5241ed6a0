"""A VGG-16-style CIFAR-10 network with BatchNorm (13 conv layers + 1 fc)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sparserobust.models.common import Normalize

VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def vgg(
    input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Sequential:
    """VGG-16 with BatchNorm for 32x32 inputs; global average pooling before the
    classifier keeps it valid for other input sizes (a 32x32 input ends at 1x1)."""
    layers: list[nn.Module] = [Normalize(mean, std)]
    channels = input_shape[0]
    size = min(input_shape[1], input_shape[2])
    for item in VGG16_LAYERS:
        if item == "M":
            if size >= 2:  # small inputs skip pools they cannot take
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        assert isinstance(item, int)
        layers += [
            nn.Conv2d(channels, item, 3, padding=1, bias=False),
            nn.BatchNorm2d(item),
            nn.ReLU(),
        ]
        channels = item
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
