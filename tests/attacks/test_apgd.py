"""APGD-CE and APGD-T: the published checkpoint schedule, agreement with the official
AutoAttack code (pyautoattack), closed-form limits on a linear model, targets hit."""

from __future__ import annotations

import math

import pytest
import torch

from sparserobust.attacks import APGD, PGD, APGDTargeted, get_attack
from sparserobust.attacks.apgd import checkpoints, dlr
from sparserobust.errors import AttackError
from sparserobust.metrics import robust_accuracy
from tests.attacks.test_attacks import closed_form, linear_problem

INF = math.inf
OFFICIAL_NORM = {INF: "Linf", 2.0: "L2"}
EPS = {INF: 0.1, 2.0: 0.6}
"""Radii ([0,1] pixels) at which the digits LeNet-300-100 keeps about half its accuracy."""


def _robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def test_checkpoints_follow_the_paper() -> None:
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times 100 steps
    assert checkpoints(100) == [
        (21, 22),
        (40, 19),
        (56, 16),
        (69, 13),
        (79, 10),
        (86, 7),
        (92, 6),
        (98, 6),
    ]
    assert all(it < 10 for it, _ in checkpoints(10))


def test_dlr_is_shift_and_scale_invariant_and_negative_margin() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, 10, generator=gen)
    y = torch.randint(0, 10, (50,), generator=gen)
    t = (y + 1) % 10
    for targets in (None, t):
        base = dlr(z, y, targets)
        torch.testing.assert_close(dlr(3.0 * z + 7.0, y, targets), base, rtol=1e-4, atol=1e-5)
    # untargeted DLR > 0 exactly when the label is not the top logit
    assert torch.equal(dlr(z, y, None) > 0, z.argmax(1) != y)


@pytest.mark.parametrize("norm", [INF, 2.0])
def test_apgd_matches_official_and_beats_pgd(digits, digits_lenet300, norm: float) -> None:
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    model, x, y = digits_lenet300, digits.test.x, digits.test.y
    eps = EPS[norm]
    ours_ce = robust_accuracy(APGD(norm=norm).run(model, x, y, epsilons=[eps], seed=0))[eps]
    ours_t = robust_accuracy(APGDTargeted(norm=norm).run(model, x, y, epsilons=[eps], seed=0))[eps]
    kw = {"eps": eps, "norm": OFFICIAL_NORM[norm], "seed": 0, "n_iter": 100, "device": "cpu"}
    off_ce = _robust(model, APGDAttack(model, **kw).perturb(x, y), y)
    off_t = _robust(model, APGDAttack_targeted(model, n_target_classes=9, **kw).perturb(x, y), y)
    # 364 images: one image is 0.27 points
    assert abs(ours_ce - off_ce) <= 0.01
    assert abs(ours_t - off_t) <= 0.01
    # one target only: it must be the runner-up class, as in the official code
    one = APGDTargeted(norm=norm, n_target_classes=1).run(model, x, y, epsilons=[eps], seed=0)
    off_one = _robust(model, APGDAttack_targeted(model, n_target_classes=1, **kw).perturb(x, y), y)
    assert abs(robust_accuracy(one)[eps] - off_one) <= 0.01
    pgd = PGD(norm=norm, steps=100).run(model, x, y, epsilons=[eps], seed=0)
    assert ours_ce <= robust_accuracy(pgd)[eps]


@pytest.mark.parametrize(("norm", "q"), [(INF, 1.0), (2.0, 2.0)])
def test_apgd_on_linear_model_never_beats_and_reaches_closed_form(norm: float, q: float) -> None:
    model, x, y = linear_problem(n=40)
    truth = closed_form(model, x, q)  # exact minimal distance
    eps = sorted(float(truth.median()) * f for f in (0.6, 0.98, 1.02, 1.5))
    res = APGD(norm=norm, steps=50).run(model, x, y, epsilons=eps, seed=0)
    for i, e in enumerate(eps):
        assert not bool((res.success[i] & (truth > e)).any())  # impossible below the truth
        assert bool(res.success[i][truth < e].all())  # a linear model has no local optima
    dist = (res.x_adv - x).flatten(2)
    norms = dist.abs().amax(2) if norm == INF else dist.norm(dim=2)
    assert bool((norms <= torch.tensor(eps)[:, None] * (1 + 1e-5)).all())
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


@pytest.mark.parametrize("norm", [INF, 2.0])
def test_targeted_apgd_hits_its_target(digits, digits_lenet300, norm: float) -> None:
    x, y = digits.test.x[:60], digits.test.y[:60]
    target = (y + 3) % 10
    eps = 0.5 if norm == INF else 3.0
    for attack in (APGDTargeted(norm=norm, steps=50), APGD(norm=norm, steps=50)):
        res = attack.run(digits_lenet300, x, y, target=target, epsilons=[eps], seed=0)
        with torch.no_grad():
            pred = digits_lenet300(res.x_adv[0]).argmax(1)
        assert float(res.success[0].float().mean()) >= 0.95
        assert bool((pred[res.success[0]] == target[res.success[0]]).all())


def test_same_seed_same_output(digits, digits_lenet300) -> None:
    x, y = digits.test.x[:80], digits.test.y[:80]
    a = APGD(norm=2, steps=10).run(digits_lenet300, x, y, epsilons=[0.3], seed=3)
    b = APGD(norm=2, steps=10).run(digits_lenet300, x, y, epsilons=[0.3], seed=3)
    assert torch.equal(a.x_adv, b.x_adv)


def test_registry_and_bad_settings() -> None:
    assert isinstance(get_attack("apgd-ce", "inf"), APGD)
    assert get_attack("apgd", "2", loss="dlr").loss == "dlr"
    assert get_attack("apgd-t", "2").n_target_classes == 9
    for bad in ({"steps": 0}, {"loss": "hinge"}, {"rho": 0.0}, {"restarts": 0}):
        with pytest.raises(AttackError):
            APGD(**bad)
    with pytest.raises(AttackError):
        APGDTargeted(n_target_classes=0)


def test_apgd_defaults_and_restarts_after_everything_is_broken() -> None:
    """AutoAttack's APGD settings are the defaults; a second restart with nothing left to
    attack returns the first restart's adversarials."""
    assert (APGD().steps, APGD().restarts, APGD().loss, APGD().norm) == (100, 1, "ce", INF)
    assert (APGDTargeted().steps, APGDTargeted().n_target_classes) == (100, 9)
    model, x, y = linear_problem(n=12)
    big = [float(closed_form(model, x, 1.0).max()) * 2]
    once = APGD(steps=10).run(model, x, y, epsilons=big, seed=0)
    twice = APGD(steps=10, restarts=2).run(model, x, y, epsilons=big, seed=0)
    assert bool(once.success.all()) and torch.equal(once.x_adv, twice.x_adv)
