"""Hardening, round two (issue 26, requirement 4): one place bounds every setting, and
every route to it (shortcut, ``params:``, nested settings) meets the same limit."""

from __future__ import annotations

import pytest

from sparserobust.config import config_from_dict
from sparserobust.errors import ConfigError
from sparserobust.settings import MAX_COUNT, MAX_EPOCHS, check_value

BASE = {"name": "b", "dataset": "digits", "model": "lenet300"}


def _attack(**fields: object) -> dict:
    return {**BASE, "eval": {"attacks": [fields]}}


@pytest.mark.parametrize(
    "config,key",
    [
        # pgd params: {steps: 10**12} ran until killed; the `steps:` shortcut refused it
        (_attack(name="pgd", norm="inf", eps=[0.1], params={"steps": 10**12}), "params.steps"),
        (_attack(name="pgd", norm="inf", eps=[0.1], steps=10**12), "steps"),
        (
            _attack(name="autoattack", norm="inf", eps=[0.1], params={"square_queries": 10**12}),
            "params.square_queries",
        ),
        (
            {
                **BASE,
                "pruning": {"methods": ["dns"], "params": {"dns": {"finetune_epochs": 10**9}}},
            },
            "pruning.params.dns.finetune_epochs",
        ),
        # an l_inf radius of 5 trained a constant classifier
        (
            {**BASE, "train": {"adversarial": {"method": "pgd", "eps": 5, "steps": 10}}},
            "train.adversarial.eps",
        ),
        (
            {
                **BASE,
                "pruning": {
                    "methods": ["magnitude"],
                    "adversarial": {"method": "pgd", "eps": 1.5, "norm": "inf", "steps": 10},
                },
            },
            "pruning.adversarial.eps",
        ),
        (
            {**BASE, "control": {"dense_front": [{"epochs": MAX_EPOCHS + 1}]}},
            "control.dense_front[0].epochs",
        ),
    ],
)
def test_every_route_meets_the_same_bound(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(config)


def test_the_bounds_themselves() -> None:
    check_value("steps", MAX_COUNT, "x")
    with pytest.raises(ConfigError, match="at most"):
        check_value("steps", MAX_COUNT + 1, "x")
    with pytest.raises(ConfigError, match=">= 0"):
        check_value("restarts", -1, "x")
    check_value("finetune_epochs", MAX_EPOCHS, "x")
    with pytest.raises(ConfigError):
        check_value("finetune_epochs", MAX_EPOCHS + 1, "x")
    check_value("eps", 1.0, "x", norm="inf")
    with pytest.raises(ConfigError):
        check_value("eps", 1.01, "x", norm="inf")
    check_value("eps", 5.0, "x", norm="2")  # an l2 radius of 5 is a real radius
    with pytest.raises(ConfigError):
        check_value("eps", 101.0, "x", norm="2")
    with pytest.raises(ConfigError):
        check_value("epsilons", (0.1, 2.0), "x", norm="inf")
    with pytest.raises(ConfigError):
        check_value("score_lr", 100.0, "x")
    check_value("norm", 10**12, "x")  # not a count (structured pruning's l_p order)
    check_value("seed", 2**40, "x")  # seeds have their own range


def test_sane_settings_pass_and_keep_the_hash() -> None:
    a = config_from_dict(_attack(name="pgd", norm="inf", eps=[0.1], params={"steps": 100}))
    b = config_from_dict(_attack(name="pgd", norm="inf", eps=[0.1], steps=100))
    assert a.eval.attacks[0].params == {"steps": 100} and b.eval.attacks[0].steps == 100
