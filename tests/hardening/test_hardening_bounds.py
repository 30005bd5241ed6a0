"""Hardening, round two (issue 26, requirement 4): one place bounds every setting, and
every route to it (shortcut, ``params:``, nested settings) meets the same limit."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from torch import nn

from sparserobust.attacks import get_attack
from sparserobust.cli import main
from sparserobust.config import config_from_dict
from sparserobust.data import Dataset
from sparserobust.engine import executors
from sparserobust.errors import ConfigError
from sparserobust.pipeline import run_study
from sparserobust.settings import (
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_JOBS,
    MAX_TIME_LIMIT,
    SEED_LIMIT,
    check_value,
)

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
    check_value("seed", 2**31, "x")  # seeds have their own range, above MAX_COUNT
    check_value("seeds", (0, SEED_LIMIT - 1), "x")
    for seed in (SEED_LIMIT, 2**64, -1):
        with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*32\)"):
            check_value("seed", seed, "x")
    check_value("jobs", MAX_JOBS, "x")
    for jobs in (0, MAX_JOBS + 1, 10**10, 2**64):
        with pytest.raises(ConfigError, match="workers"):
            check_value("jobs", jobs, "x")
    check_value("time_limit", MAX_TIME_LIMIT, "x")
    for limit in (0.0, 0, MAX_TIME_LIMIT * 2, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="x"):
            check_value("time_limit", limit, "x")
    with pytest.raises(ConfigError, match="finite"):
        check_value("lr", float("nan"), "x")  # NaN compared false with every limit
    with pytest.raises(ConfigError, match="at most 1"):
        check_value("eps", 2, "x", norm="inf")  # an integer radius is a radius, not a count
    with pytest.raises(ConfigError):
        check_value("max_accuracy_drop", 1.5, "x")


def test_sane_settings_pass_and_keep_the_hash() -> None:
    a = config_from_dict(_attack(name="pgd", norm="inf", eps=[0.1], params={"steps": 100}))
    b = config_from_dict(_attack(name="pgd", norm="inf", eps=[0.1], steps=100))
    assert a.eval.attacks[0].params == {"steps": 100} and b.eval.attacks[0].steps == 100


# --- every CLI flag meets the same bounds (issue 26, requirement 4) ------------------

HUGE = str(2**64)
TRAIN = ["train", "--model", "linear", "--dataset", "digits", "--out", "o.st"]
PRUNE = ["prune", "--checkpoint", "c.st", "--method", "magnitude", "--sparsity", "0.5"]
PRUNE += ["--out", "pruned"]
ATTACK = ["attack", "--checkpoint", "c.st", "--attack", "fgsm", "--n", "5"]


@pytest.mark.parametrize(
    "args,text",
    [
        ([*ATTACK, "--eps", "1e308"], "--eps[0]: must be at most 1"),  # was an overflow
        ([*ATTACK, "--eps", "0.1", "--seed", HUGE], "--seed: a seed must be in"),
        ([*ATTACK, "--eps", "0.1", "--n", str(10**10)], "--n: must be at most"),
        ([*TRAIN, "--seed", HUGE], "--seed: a seed must be in"),  # was an overflow
        ([*TRAIN, "--seed", "-1"], "--seed: a seed must be in"),
        ([*TRAIN, "--epochs", str(10**5)], "--epochs: must be at most"),
        ([*TRAIN, "--lr", "nan"], "--lr: must be a finite number"),
        ([*TRAIN, "--lr", "1e300"], "--lr: must be at most"),
        ([*TRAIN, "--batch-size", str(10**7)], "--batch-size: must be at most"),
        ([*PRUNE, "--steps", str(10**10)], "--steps: must be at most"),
        ([*PRUNE, "--retrain-epochs", str(10**5)], "--retrain-epochs: must be at most"),
        ([*PRUNE, "--dns-finetune-epochs", str(10**5)], "--dns-finetune-epochs: must be at"),
        ([*PRUNE, "--seed", HUGE], "--seed: a seed must be in"),
        (["evaluate", "--checkpoint", "c.st", "--n", str(10**10)], "--n: must be at most"),
        (["run", "--out", "r", "-j", str(10**10)], "--jobs: the number of workers"),
        (["run", "--out", "r", "-j", HUGE], "--jobs: the number of workers"),  # was a traceback
        (["run", "--out", "r", "--executor", "ray", "-j", str(10**9)], "--jobs"),  # hung
        (["report", "r", "--seed", HUGE], "--seed[0]: a seed must be in"),
        (["report", "r", "--max-accuracy-drop", "nan"], "--max-accuracy-drop: must be a finite"),
        (["compare", "a", "b", "--max-accuracy-drop", "2"], "--max-accuracy-drop: must be at"),
        (["verify", "c.st", "--eps", "0.1", "--time-limit", "1e300"], "--time-limit: must be"),
        (["verify", "c.st", "--eps", "5"], "--eps[0]: must be at most 1"),
        (["verify", "c.st", "--eps", "5", "--norm", "2", "--method", "crown"], "nothing"),
        (["verify", "c.st", "--eps", "0.1", "--seed", HUGE], "--seed: a seed must be in"),
        (
            [*ATTACK, "--attack", "pgd", "--norm", "2", "--eps", "150"],
            "--eps[0]: must be at most 100",
        ),
        (["run", "--out", "r", "--address", "auto", "-j", "2"], "--address is for --executor ray"),
        (["run", "--out", "r", "--executor", "ray", "-j", "1000"], "--jobs: the number of workers"),
    ],
)
def test_every_cli_flag_meets_its_bound_before_any_work(
    args: list[str],
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(args)
    _, err = capsys.readouterr()
    if text == "nothing":  # an l2 radius of 5 is a real radius: it fails later, on the file
        assert code == 2 and "c.st does not exist" in err
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert text in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written, no run directory made


def test_jobs_above_the_cpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A local pool above the CPUs warns and runs; a local Ray instance would start one
    Python worker per CPU it is told about, so it refuses; with --address -j is unused."""
    monkeypatch.setattr(executors, "available_cpus", lambda: 2)
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("sparserobust.engine.executors")
    logger.addHandler(handler)
    try:
        executors.check_jobs("local", 2)
        executors.check_jobs("ray", 2)
        assert seen == []
        executors.check_jobs("local", 3)
        assert len(seen) == 1 and "--jobs 3 is more than the 2 CPUs" in seen[0]
        executors.check_jobs("ray", 4, address="auto")
        assert len(seen) == 2 and "not used with --address" in seen[1]
    finally:
        logger.removeHandler(handler)
    with pytest.raises(ConfigError, match="more than the 2 CPUs here: a local Ray instance"):
        executors.check_jobs("ray", 3)
    with pytest.raises(ConfigError, match="workers"):
        executors.make_executor("local", 10**10)
    with pytest.raises(ConfigError, match="workers"):
        run_study(config_from_dict(BASE), tmp_path / "run", jobs=2**64)
    with pytest.raises(ConfigError, match="local Ray instance"):
        run_study(config_from_dict(BASE), tmp_path / "run", jobs=3, executor="ray")
    assert not (tmp_path / "run").exists()


def test_library_routes_meet_the_same_bounds(digits_linear: nn.Module, digits: Dataset) -> None:
    """The Python API checks what the flags check: an attack's seed and radius."""
    x, y = digits.test.x[:4], digits.test.y[:4]
    attack = get_attack("fgsm", "inf")
    with pytest.raises(ConfigError, match="seed must be in"):
        attack.run(digits_linear, x, y, epsilons=[0.1], seed=2**64)
    with pytest.raises(ConfigError, match="epsilons"):
        attack.run(digits_linear, x, y, epsilons=[1e308], seed=0)
    assert attack.run(digits_linear, x, y, epsilons=[0.1], seed=SEED_LIMIT - 1).success.shape


@pytest.mark.parametrize(
    "verify,text",
    [
        ("{epsilons: [0.02], time_limit: 1.0e+12}", "verify.time_limit: must be at most 86400"),
        ("{epsilons: [5]}", "verify.epsilons[0]: must be at most 1"),
        ("{epsilons: [0.1], n_exact: -1}", "verify.n_exact: must be >= 0"),
        ("{epsilons: [0.1], n: 10000000}", "verify.n: must be at most"),
    ],
)
def test_verify_settings_in_a_config_meet_the_same_bounds(verify: str, text: str) -> None:
    """The verify measurement's settings (the round-two sweep): the same limits as the flags."""
    with pytest.raises(ConfigError, match=re.escape(text)):
        config_from_dict({**BASE, "eval": {"measurements": {"verify": yaml.safe_load(verify)}}})
