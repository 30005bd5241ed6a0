"""Model registry: architectures, parameter counts, normalisation inside the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparserobust.errors import ConfigError, ModelError
from sparserobust.models import Normalize, build_model
from sparserobust.pruning import prunable_layers

# (name, input shape, expected trainable parameters, prunable Linear/Conv layers)
CASES = [
    ("lenet300", (1, 28, 28), 266_610, 3),  # 784*300+300 + 300*100+100 + 100*10+10
    ("lenet5", (1, 28, 28), 431_080, 4),  # Caffe LeNet-5 as in Han et al. 2015
    ("linear", (1, 28, 28), 7_850, 1),
    ("resnet32", (3, 32, 32), 464_154, 32),  # 31 conv + 1 fc, option-A shortcuts
    ("vgg", (3, 32, 32), 14_724_042, 14),  # 13 conv (no bias) + BN + 1 fc
]


@pytest.mark.parametrize("name,shape,params,layers", CASES)
def test_architecture(name: str, shape: tuple[int, int, int], params: int, layers: int) -> None:
    model = build_model(name, shape, 10).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(prunable_layers(model)) == layers
    assert model(torch.rand(3, *shape)).shape == (3, 10)


def test_num_classes_and_shape_follow_dataset() -> None:
    model = build_model("lenet5", (3, 32, 32), 7)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert model[6].in_features == 50 * 5 * 5


def test_normalisation_lives_inside_the_model() -> None:
    torch.manual_seed(0)
    plain = build_model("linear", (1, 8, 8), 10)
    normed = build_model("linear", (1, 8, 8), 10, mean=[0.5], std=[0.25])
    normed.load_state_dict(plain.state_dict() | {"0.mean": normed[0].mean, "0.std": normed[0].std})
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-6)
    assert isinstance(normed[0], Normalize)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        build_model("alexnet", (1, 28, 28), 10)
    with pytest.raises(ModelError, match="at least 16x16"):
        build_model("lenet5", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="one per input channel"):
        build_model("lenet300", (3, 8, 8), 10, mean=[0.5], std=[0.2])


def test_models_use_relu_modules_for_activation_hooks() -> None:
    for name, shape, *_ in CASES:
        if name == "linear":
            continue
        model = build_model(name, shape, 10)
        assert any(isinstance(m, nn.ReLU) for m in model.modules()), name
