"""Robustness metrics on hand-made attack results with known answers, and the attack CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparserobust.attacks import AttackResult
from sparserobust.cli import main
from sparserobust.errors import AttackError
from sparserobust.metrics import (
    clean_accuracy,
    median_norm,
    rho,
    robust_accuracy,
    success_rate,
    summarize,
)


def minimisation_result() -> AttackResult:
    """4 points: #0 misclassified, #1-#2 broken at l2 0.3 and 0.6, #3 not broken."""
    x = torch.full((4, 1, 2, 2), 0.5)  # ||x||_2 = 1
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] += 0.3
    x_adv[2, 0, 0, 0] -= 0.6
    return AttackResult(
        attack="deepfool",
        norm=2.0,
        x=x,
        y=torch.tensor([0, 1, 2, 3]),
        clean_correct=torch.tensor([False, True, True, True]),
        x_adv=x_adv,
        success=torch.tensor([True, True, True, False]),
        distances=torch.tensor([0.0, 0.3, 0.6, math.inf]),
    )


def fixed_result() -> AttackResult:
    """3 points, eps 0.1 and 0.2: #0 misclassified, #1 broken at 0.1, #2 at 0.2 only."""
    x = torch.full((3, 1, 2, 2), 0.5)
    adv = x.unsqueeze(0).repeat(2, 1, 1, 1, 1)
    adv[0, 1] += 0.1
    adv[1, 1] += 0.1
    adv[1, 2] -= 0.2
    return AttackResult(
        attack="fgsm",
        norm=math.inf,
        x=x,
        y=torch.tensor([0, 1, 2]),
        clean_correct=torch.tensor([False, True, True]),
        x_adv=adv,
        success=torch.tensor([[True, True, False], [True, True, True]]),
        distances=torch.tensor([[0.0, 0.1, math.inf], [0.0, 0.1, 0.2]]),
        epsilons=(0.1, 0.2),
    )


def test_minimisation_metrics_have_known_values() -> None:
    r = minimisation_result()
    assert clean_accuracy(r) == pytest.approx(0.75)
    assert success_rate(r) == pytest.approx(2 / 3)  # of the 3 correctly classified
    assert median_norm(r) == pytest.approx(0.45)  # median of 0.3 and 0.6
    assert rho(r) == pytest.approx((0.3 + 0.6) / 2)  # ||x||_2 = 1
    acc = robust_accuracy(r, [0.2, 0.3, 0.5, 1.0])
    assert acc == pytest.approx({0.2: 0.75, 0.3: 0.5, 0.5: 0.5, 1.0: 0.25})
    with pytest.raises(AttackError, match="epsilons"):
        robust_accuracy(r)


def test_fixed_epsilon_metrics_have_known_values() -> None:
    r = fixed_result()
    assert robust_accuracy(r) == pytest.approx({0.1: 1 / 3, 0.2: 0.0})
    assert success_rate(r, 0.1) == pytest.approx(0.5)
    assert success_rate(r) == pytest.approx(1.0)
    assert median_norm(r) == pytest.approx(0.15)
    assert rho(r, 0.1) == pytest.approx(0.1 / 0.5)  # l_inf: ||r|| / ||x|| = 0.1 / 0.5
    with pytest.raises(AttackError, match="not attacked"):
        success_rate(r, 0.3)


def test_summary_is_json_and_complete() -> None:
    s = summarize(fixed_result())
    text = json.dumps(s, allow_nan=False)
    back = json.loads(text)
    for key in ("clean_accuracy", "success_rate", "median_norm", "rho", "robust_accuracy"):
        assert key in back
    assert back["robust_accuracy"] == {"0.1": pytest.approx(1 / 3), "0.2": 0.0}
    assert back["at_epsilon"] == 0.2 and back["norm"] == "linf"
    empty = minimisation_result()
    empty.success[:] = False
    empty.distances[:] = math.inf
    s2 = summarize(empty, [0.5])
    json.dumps(s2, allow_nan=False)
    assert s2["median_norm"] is None and s2["rho"] is None


def test_attack_cli_json(tmp_path, capsys) -> None:
    ckpt = tmp_path / "digits.st"
    rc = main(
        ["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "3",
         "--out", str(ckpt), "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    rc = main(
        ["attack", "--checkpoint", str(ckpt), "--attack", "pgd", "--eps", "0.05,0.3",
         "--n", "100", "--seed", "1", "--json", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    acc = out["robust_accuracy"]
    assert set(acc) == {"0.05", "0.3"}
    assert 0 <= acc["0.3"] <= acc["0.05"] <= out["clean_accuracy"]
    assert out["clean_accuracy"] > 0.5 and out["seconds"] >= 0
    for key in ("success_rate", "median_norm", "rho"):
        assert key in out
    rc = main(["attack", "--checkpoint", str(ckpt), "--attack", "deepfool", "--n", "50"])
    assert rc == 0
    assert "median l2" in capsys.readouterr().out
    rc = main(["attack", "--checkpoint", str(ckpt), "--attack", "fgsm", "--eps", "-1"])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: epsilons must be")
