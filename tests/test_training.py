"""Training: reaches a real accuracy, is bit-identical for a seed, validates its config."""

from __future__ import annotations

import pytest
import torch

from sparserobust.data import Dataset
from sparserobust.errors import ConfigError
from sparserobust.models import build_model
from sparserobust.training import TrainConfig, evaluate_accuracy, train_model


def _train(digits: Dataset, seed: int, epochs: int = 3) -> torch.nn.Module:
    info = digits.info
    torch.manual_seed(123)  # the config's seed must decide, not the global state
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    return train_model(model, digits.train, TrainConfig(epochs=epochs, seed=seed), progress=False)


def test_trained_model_is_accurate(digits_lenet300: torch.nn.Module, digits: Dataset) -> None:
    assert evaluate_accuracy(digits_lenet300, digits.test) >= 0.93


def test_same_seed_gives_identical_weights(digits: Dataset) -> None:
    a, b = _train(digits, seed=5), _train(digits, seed=5)
    for (_, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(ta, tb)
    c = _train(digits, seed=6)
    assert not torch.equal(a.state_dict()["2.weight"], c.state_dict()["2.weight"])


def test_zero_epochs_leaves_weights(digits: Dataset) -> None:
    info = digits.info
    model = build_model("linear", info.input_shape, info.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_model(model, digits.train, TrainConfig(epochs=0), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_after_step_hook_runs_every_step(digits: Dataset) -> None:
    info = digits.info
    model = build_model("linear", info.input_shape, info.num_classes)
    steps: list[int] = []
    train_model(
        model,
        digits.train,
        TrainConfig(epochs=2, batch_size=500),
        progress=False,
        after_step=lambda s, m: steps.append(s),
    )
    assert steps == list(range(1, 7))  # ceil(1433/500)=3 steps x 2 epochs


def test_eval_restores_training_mode(digits: Dataset) -> None:
    model = build_model("linear", digits.info.input_shape, 10).train()
    evaluate_accuracy(model, digits.test)
    assert model.training


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": -1},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"momentum": 1.0},
        {"weight_decay": -1.0},
        {"schedule": "step"},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)
