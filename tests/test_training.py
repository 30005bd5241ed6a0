"""Training: reaches a real accuracy, is bit-identical for a seed, validates its config;
adversarial training (PGD-AT, TRADES) raises robust accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sparserobust.attacks import get_attack, lp_norms
from sparserobust.data import Dataset
from sparserobust.errors import ConfigError
from sparserobust.models import build_model
from sparserobust.training import (
    AdversarialTrainingSettings,
    TrainSettings,
    adversarial_examples,
    evaluate_accuracy,
    train_model,
)


def _train(digits: Dataset, seed: int, epochs: int = 3) -> torch.nn.Module:
    info = digits.info
    torch.manual_seed(123)  # the config's seed must decide, not the global state
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    return train_model(model, digits.train, TrainSettings(epochs=epochs, seed=seed), progress=False)


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
    train_model(model, digits.train, TrainSettings(epochs=0), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_after_step_hook_runs_every_step(digits: Dataset) -> None:
    info = digits.info
    model = build_model("linear", info.input_shape, info.num_classes)
    steps: list[int] = []
    train_model(
        model,
        digits.train,
        TrainSettings(epochs=2, batch_size=500),
        progress=False,
        after_step=lambda s, m: steps.append(s),
    )
    assert steps == list(range(1, 7))  # ceil(1433/500)=3 steps x 2 epochs


def test_eval_restores_training_mode(digits: Dataset) -> None:
    """Every forward pass of the evaluation runs in eval mode, and the training mode is
    restored after (the old test passed when eval mode was never set)."""
    model = build_model("linear", digits.info.input_shape, 10).train()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    evaluate_accuracy(model, digits.test)
    assert seen and not any(seen)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    evaluate_accuracy(model, digits.test)
    assert not model.training


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
        TrainSettings(**kwargs)


# -- adversarial training ---------------------------------------------------------------------


EPSILONS = (0.1, 0.2)


def _worst_case_robust(model: torch.nn.Module, digits: Dataset) -> list[float]:
    """Robust accuracy per eps in EPSILONS on the digits test split under PGD (20 steps,
    2 restarts) and Square together: a point counts only when neither attack breaks it."""
    x, y = digits.test.x, digits.test.y
    pgd = get_attack("pgd", "inf", steps=20, restarts=2).run(model, x, y, epsilons=EPSILONS)
    square = get_attack("square", "inf").run(model, x, y, epsilons=EPSILONS, seed=0)
    robust = pgd.clean_correct[None] & ~pgd.success & ~square.success
    return robust.float().mean(1).tolist()


@pytest.fixture(scope="module")
def natural_robust(digits_lenet300: torch.nn.Module, digits: Dataset) -> list[float]:
    return _worst_case_robust(digits_lenet300, digits)


@pytest.mark.parametrize(
    "adversarial",
    [
        AdversarialTrainingSettings("pgd", eps=0.1, steps=5),
        AdversarialTrainingSettings("trades", 0.1, 5, beta=6.0),
    ],
    ids=["pgd", "trades"],
)
def test_adversarial_training_raises_robust_accuracy(
    adversarial: AdversarialTrainingSettings, natural_robust: list[float], digits: Dataset
) -> None:
    # measured: natural 0.566 (eps 0.1) / 0.005 (eps 0.2); PGD-AT 0.777 / 0.192;
    # TRADES 0.758 / 0.277 (clean 0.967, 0.962, 0.951)
    info = digits.info
    torch.manual_seed(0)  # same initial weights as the natural fixture
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    config = TrainSettings(epochs=10, seed=0, adversarial=adversarial)
    train_model(model, digits.train, config, progress=False).eval()
    assert evaluate_accuracy(model, digits.test) >= 0.93
    robust = _worst_case_robust(model, digits)
    for eps, natural, adv in zip(EPSILONS, natural_robust, robust, strict=True):
        assert adv >= natural + 0.12, (eps, natural, adv)


@pytest.mark.parametrize("method", ["pgd", "trades"])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_training_examples_lie_in_ball_and_raise_the_loss(
    method: str, norm: str, digits_lenet300: torch.nn.Module, digits: Dataset
) -> None:
    eps = 0.1 if norm == "inf" else 1.0
    settings = AdversarialTrainingSettings(method, eps=eps, steps=10, beta=6.0, norm=norm)
    x, y = digits.test.x[:200], digits.test.y[:200]
    model = copy.deepcopy(digits_lenet300).train()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    x_adv = adversarial_examples(model, x, y, settings, gen)
    assert model.training  # mode restored
    for p, g in zip(model.parameters(), grads, strict=True):  # no parameter gradients added
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    dist = lp_norms(x_adv - x, settings.p)
    assert float(dist.max()) <= eps * (1 + 1e-5)
    assert float(dist.max()) >= 0.5 * eps  # it moved
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    model.eval()
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
    if method == "pgd":
        assert float(F.cross_entropy(adv, y)) > float(F.cross_entropy(clean, y)) + 0.5
    else:
        kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
        assert float(kl) > 0.1


def test_adversarial_training_is_reproducible(digits: Dataset) -> None:
    info = digits.info

    def run(seed: int) -> torch.nn.Module:
        torch.manual_seed(1)
        model = build_model("linear", info.input_shape, info.num_classes)
        adv = AdversarialTrainingSettings("pgd", 0.1, 3)
        train_model(
            model, digits.train, TrainSettings(epochs=1, seed=seed, adversarial=adv), progress=False
        )
        return model

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.state_dict()["2.weight"], b.state_dict()["2.weight"])
    assert not torch.equal(a.state_dict()["2.weight"], c.state_dict()["2.weight"])


def test_as_dict_without_adversarial_is_unchanged() -> None:
    assert sorted(TrainSettings().as_dict()) == sorted(
        ["epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "seed"]
    )
    config = TrainSettings(adversarial={"method": "TRADES", "eps": 0.1, "steps": 7, "beta": 6})
    assert config.adversarial == AdversarialTrainingSettings("trades", 0.1, 7, beta=6.0)
    assert config.as_dict()["adversarial"] == {
        "method": "trades",
        "eps": 0.1,
        "steps": 7,
        "beta": 6,
        "norm": "inf",
        "rel_stepsize": None,
    }
    assert AdversarialTrainingSettings("pgd", 0.3, 10).step_size == pytest.approx(0.075)
    assert AdversarialTrainingSettings("pgd", 0.3, 10, norm="l2", rel_stepsize=0.1).p == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "pgd", "eps": -0.1, "steps": 5}, "eps"),
        ({"method": "pgd", "eps": 0.0, "steps": 5}, "eps"),
        ({"method": "pgd", "eps": float("nan"), "steps": 5}, "eps"),
        ({"method": "pgd", "eps": 0.1, "steps": 0}, "steps"),
        ({"method": "pgd", "eps": 0.1, "steps": 2.5}, "steps"),
        ({"method": "trades", "eps": 0.1, "steps": 5}, "beta"),
        ({"method": "trades", "eps": 0.1, "steps": 5, "beta": -1.0}, "beta"),
        ({"method": "fgsm", "eps": 0.1, "steps": 5}, "pgd or trades"),
        ({"method": "pgd", "eps": 0.1, "steps": 5, "norm": "1"}, "norm"),
        ({"method": "pgd", "eps": 0.1, "steps": 5, "rel_stepsize": 0}, "rel_stepsize"),
        ({"method": "pgd", "eps": 0.1, "steps": 5, "step": 3}, "unknown adversarial"),
        ({"method": "pgd", "steps": 5}, "needs eps"),
    ],
)
def test_bad_adversarial_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TrainSettings(adversarial=kwargs)
    assert "\n" not in str(info.value)


def test_training_examples_are_made_in_eval_mode() -> None:
    """BatchNorm running statistics do not move while examples are searched."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
    ).train()
    stats = model[2].running_mean.clone()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    settings = AdversarialTrainingSettings("pgd", 0.1, 3)
    adversarial_examples(model, x, y, settings, torch.Generator().manual_seed(0))
    assert torch.equal(model[2].running_mean, stats) and model.training
