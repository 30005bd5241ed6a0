"""Channels-last evaluation of convolutional models: same names, same state, ordinary
NCHW input gradients, the same measurements up to float32 rounding; not hashed, but
recorded in the provenance."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

from sparserobust.config import AttackSettings, EvalSettings, config_from_dict
from sparserobust.measurements import plan_cells, run_cell, values_of
from sparserobust.models import build_model
from sparserobust.pipeline import run_study
from sparserobust.utils import use_channels_last


def _pair(shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = build_model("lenet5", shape, 10).eval()
    return model, use_channels_last(copy.deepcopy(model))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_channels_last_model_is_the_same_function(shape: tuple[int, int, int]) -> None:
    model, fast = _pair(shape)
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in model.named_modules()]
    assert fast.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(fast.state_dict()[k], v)
    x = torch.rand(16, *shape)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = model(xa), fast(xb)
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-5)
    (ga,) = torch.autograd.grad(la.logsumexp(1).sum(), xa)
    (gb,) = torch.autograd.grad(lb.logsumexp(1).sum(), xb)
    # the caller gets an ordinary NCHW gradient (attacks .view() it)
    assert gb.is_contiguous() and gb.shape == x.shape
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


def test_models_without_convolutions_are_left_alone() -> None:
    model = build_model("lenet300", (1, 28, 28), 10)
    assert use_channels_last(model) is model
    assert not model._forward_pre_hooks


def test_channels_last_measurements_agree() -> None:
    """FGSM, PGD and DeepFool on a LeNet-5 give the same numbers in both layouts, up to
    float32 rounding (labels are the model's own predictions: every point counts)."""
    model, fast = _pair((1, 28, 28))
    x = torch.rand(48, 1, 28, 28) * 0.3
    with torch.no_grad():
        y = model(x).argmax(1)
    settings = EvalSettings(
        n=48,
        attacks=(
            AttackSettings("fgsm", "inf", (0.01, 0.03)),
            AttackSettings("pgd", "inf", (0.01, 0.03), steps=10),
            AttackSettings("deepfool", "2", (0.1,)),
        ),
    )
    for cell in plan_cells(settings, 0):
        if cell.measurement != "attack":
            continue
        a = values_of(run_cell(model, x, y, cell, 256))
        b = values_of(run_cell(fast, x, y, cell, 256))
        assert a.keys() == b.keys() and a
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1 / 48 + 1e-6), key


def test_channels_last_is_recorded_not_hashed(tmp_path: Path) -> None:
    from tests.test_data import make_tiny_cifar

    make_tiny_cifar(tmp_path / "data", per_batch=16)
    spec = {
        "name": "cl",
        "dataset": "cifar10",
        "model": "lenet5",
        "data_dir": str(tmp_path / "data"),
        "train": {"epochs": 1, "batch_size": 16},
        "pruning": {"methods": ["magnitude"], "sparsities": [0.5], "retrain_epochs": 1},
        "eval": {
            "n": 16,
            "attacks": [{"name": "fgsm", "eps": [0.01]}],
            "clever": {"n": 0},
            "bounds": False,
        },
    }
    plain = config_from_dict(spec)
    fast = config_from_dict({**spec, "channels_last": True})
    assert fast.channels_last and fast.config_hash() == plain.config_hash()
    run_study(plain, tmp_path / "plain", progress=False)
    run_study(fast, tmp_path / "fast", progress=False)

    def rows(run: Path) -> tuple[list, list]:
        con = sqlite3.connect(run / "results.sqlite")
        res = con.execute(
            "SELECT model_key, measurement, numbers, provenance FROM results ORDER BY 1, 2"
        ).fetchall()
        models = con.execute(
            "SELECT model_key, checkpoint_sha256 FROM models ORDER BY 1"
        ).fetchall()
        con.close()
        return res, models

    (res_a, models_a), (res_b, models_b) = rows(tmp_path / "plain"), rows(tmp_path / "fast")
    assert models_a == models_b  # training and pruning are not affected
    assert [r[:2] for r in res_a] == [r[:2] for r in res_b] and len(res_a) == 2 * 3
    for ra, rb in zip(res_a, res_b, strict=True):
        assert json.loads(ra[3])["channels_last"] is False
        assert json.loads(rb[3])["channels_last"] is True
        ha, hb = values_of(json.loads(ra[2])), values_of(json.loads(rb[2]))
        assert ha.keys() == hb.keys()
        for key in ha:
            assert hb[key] == pytest.approx(ha[key], rel=1e-3, abs=1 / 16 + 1e-6)
