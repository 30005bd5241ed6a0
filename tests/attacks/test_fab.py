"""FAB: the exact box-constrained hyperplane step, closed-form minimal distances on a
linear model, FAB-T against the official code, and FAB-l_inf against DeepFool-l_inf."""

from __future__ import annotations

import math

import pytest
import torch

from sparserobust.attacks import FAB, DeepFool, FABTargeted, fab, get_attack
from sparserobust.attacks.fab import box_hyperplane_step
from sparserobust.errors import AttackError
from sparserobust.metrics import median_norm, robust_accuracy
from tests.attacks.test_attacks import closed_form, linear_problem

INF = math.inf


def _bisection_step(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, p: float) -> torch.Tensor:
    """The same minimiser by bisection on the scalar tau (slow, obviously right)."""
    s = torch.where(c < 0, -1.0, 1.0)
    w, c = w * s[:, None], c * s
    v = w if p == 2 else w.sign()
    lo, hi = torch.zeros_like(c), torch.full_like(c, 1e4)
    for _ in range(200):
        mid = (lo + hi) / 2
        reach = (w * torch.minimum(torch.maximum(mid[:, None] * v, -t), 1 - t)).sum(1)
        hi, lo = torch.where(reach >= c, mid, hi), torch.where(reach >= c, lo, mid)
    return torch.minimum(torch.maximum(hi[:, None] * v, -t), 1 - t)


@pytest.mark.parametrize("newton_steps", [12, 1, 0])
@pytest.mark.parametrize("p", [2.0, INF])
def test_box_hyperplane_step_is_exact(p: float, newton_steps: int, monkeypatch) -> None:
    # 12: Newton's method solves every row; 1: most rows fall back to sorting; 0: all do
    monkeypatch.setattr(fab, "_NEWTON_STEPS", newton_steps)
    gen = torch.Generator().manual_seed(0)
    n, d = 300, 40
    t = torch.rand(n, d, generator=gen)
    t[:, :4], t[:, 4:8] = 0.0, 1.0  # coordinates on the box faces
    w = torch.randn(n, d, generator=gen)
    w[:, 8:12] = 0.0  # coordinates that do not matter
    c = torch.randn(n, generator=gen) * torch.linspace(0.01, 15, n)  # some out of reach
    d_ours = box_hyperplane_step(t, w, c, p)
    torch.testing.assert_close(d_ours, _bisection_step(t, w, c, p), rtol=0, atol=1e-5)
    reachable = (w * torch.where(w * c[:, None] > 0, 1 - t, -t)).sum(1).abs() >= c.abs()
    assert 0 < int(reachable.sum()) < n
    torch.testing.assert_close((w * d_ours).sum(1)[reachable], c[reachable], rtol=0, atol=1e-4)
    assert float((t + d_ours).min()) >= 0.0 and float((t + d_ours).max()) <= 1.0
    assert bool((d_ours[:, 8:12] == 0).all())
    # unconstrained closed form where the box cannot bind
    tc = torch.full((n, d), 0.5)
    small = c * 1e-3
    expect = small[:, None] * (w / (w * w).sum(1, keepdim=True))  # l2: c w / ||w||^2
    if p == INF:
        expect = small[:, None] * w.sign() / w.abs().sum(1, keepdim=True)  # c sign(w) / ||w||_1
    torch.testing.assert_close(box_hyperplane_step(tc, w, small, p), expect, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("norm", "q"), [(2.0, 2.0), (INF, 1.0)])
def test_fab_finds_closed_form_distance_on_linear_model(norm: float, q: float) -> None:
    model, x, y = linear_problem(n=24)
    truth = closed_form(model, x, q)
    res = FAB(norm=norm, steps=20, n_target_classes=4).run(model, x, y)
    assert bool(res.success.all())
    assert bool((res.distances >= truth * (1 - 1e-4)).all())  # never below the truth
    torch.testing.assert_close(res.distances, truth, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("norm", [INF, 2.0])
def test_fab_t_matches_official(digits, digits_lenet300, norm: float) -> None:
    from pyautoattack.fab_pt import FABAttack_PT

    model, x, y = digits_lenet300, digits.test.x, digits.test.y
    eps = 0.1 if norm == INF else 0.6
    ours = robust_accuracy(FABTargeted(norm=norm).run(model, x, y, epsilons=[eps], seed=0))[eps]
    off = FABAttack_PT(
        model, norm="Linf" if norm == INF else "L2", n_restarts=1, n_iter=100, eps=eps, seed=0
    )
    off.targeted, off.n_target_classes = True, 9
    with torch.no_grad():
        off_acc = float((model(off.perturb(x, y)).argmax(1) == y).float().mean())
    assert abs(ours - off_acc) <= 0.01  # 364 images: 0.01 is 3 images


def test_fab_linf_median_not_larger_than_deepfool(digits, digits_lenet300) -> None:
    model, x, y = digits_lenet300, digits.test.x, digits.test.y
    fab = FAB(norm=INF).run(model, x, y, seed=0)
    deepfool = DeepFool(norm=INF).run(model, x, y)
    assert float(fab.success[fab.clean_correct].float().mean()) == 1.0
    assert median_norm(fab) <= median_norm(deepfool)


def test_bad_settings_raise() -> None:
    assert get_attack("fab", "inf").fixed_epsilon is False
    assert get_attack("fab-t", "2").fixed_epsilon is True
    for bad in ({"steps": 0}, {"eta": 0.5}, {"beta": 1.0}, {"alpha_max": 2.0}):
        with pytest.raises(AttackError):
            FAB(**bad)


@pytest.mark.parametrize("norm", [INF, 2.0])
def test_fab_t_all_targets_at_once_breaks_the_same_points(
    digits, digits_lenet300, norm, monkeypatch
):
    """One start per target from the clean input has no randomness, so running the 9
    targets together breaks exactly the points the one-target-at-a-time loop breaks."""
    x, y = digits.test.x[:150], digits.test.y[:150]
    eps = 0.12 if norm == INF else 0.8
    together = FABTargeted(norm, steps=30).run(digits_lenet300, x, y, epsilons=[eps])
    monkeypatch.setattr(fab, "_ROWS", 1)  # one target per run
    alone = FABTargeted(norm, steps=30).run(digits_lenet300, x, y, epsilons=[eps])
    assert 0 < int(together.success.sum()) < int(together.clean_correct.sum())
    assert torch.equal(together.success, alone.success)


@pytest.mark.parametrize(("norm", "q"), [(math.inf, 1.0), (2.0, 2.0)])
def test_fab_t_on_linear_model_breaks_the_points_inside_the_ball(norm: float, q: float) -> None:
    """FAB-T (as AutoAttack runs it) on a linear model: its linearisation is exact, so at
    each eps it breaks every point whose closed-form distance (times the 1.05 overshoot)
    is below eps and none above the distance (a fast check of the code the
    official-FAB-T comparison covers)."""
    model, x, y = linear_problem(n=40)
    truth = closed_form(model, x, q)
    eps = sorted(float(truth.median()) * f for f in (0.6, 0.97, 1.03, 1.5))
    for attack in (FABTargeted(norm=norm, steps=10), FABTargeted(norm=norm, steps=10, restarts=2)):
        res = attack.run(model, x, y, epsilons=eps, seed=0)
        for i, e in enumerate(eps):
            assert not bool((res.success[i] & (truth > e)).any())
            assert bool(res.success[i][truth * 1.06 < e].all())
        dist = (res.x_adv - x).flatten(2)
        norms = dist.abs().amax(2) if norm == math.inf else dist.norm(dim=2)
        assert bool((norms <= torch.tensor(eps)[:, None] * (1 + 1e-5)).all())
    # one target class (the runner-up logit) misses the points whose nearest boundary is
    # another class's; targeted at the runner-up, success means predicted as it
    runner_up = model(x).topk(2, dim=1).indices[:, 1]
    big = [float(truth.max()) * 3]
    one = FABTargeted(norm=norm, steps=10, n_target_classes=1).run(model, x, y, epsilons=big)
    aimed = FABTargeted(norm=norm, steps=10).run(model, x, y, epsilons=big, target=runner_up)
    assert bool(one.success.all()) and bool(aimed.success.all())
    assert torch.equal(model(aimed.x_adv[0]).argmax(1), runner_up)


def test_fab_restarts_and_given_target_on_linear_model() -> None:
    """Restarts from random points keep the closed-form distance; with a target given,
    FAB runs against that class only and its adversarials are predicted as it."""
    model, x, y = linear_problem(n=24)
    truth = closed_form(model, x, 2.0)
    res = FAB(norm=2.0, steps=20, n_target_classes=4, restarts=2).run(model, x, y, seed=1)
    assert bool(res.success.all())
    torch.testing.assert_close(res.distances, truth, rtol=1e-2, atol=1e-4)
    with torch.no_grad():
        target = model(x).topk(2, dim=1).indices[:, 1]
    aimed = FAB(norm=2.0, steps=20).run(model, x, y, target=target)
    assert bool(aimed.success.all())
    with torch.no_grad():
        assert torch.equal(model(aimed.x_adv).argmax(1), target)
    assert bool((aimed.distances >= truth * (1 - 1e-4)).all())


def test_fab_restarts_draw_from_the_seed_only(digits, digits_lenet300) -> None:
    """Restart noise comes from the run's generator: the global torch RNG does not
    change the result."""
    x, y = digits.test.x[:30], digits.test.y[:30]
    torch.manual_seed(1)
    a = FAB(INF, steps=10, n_target_classes=2, restarts=2).run(digits_lenet300, x, y, seed=0)
    torch.manual_seed(2)
    b = FAB(INF, steps=10, n_target_classes=2, restarts=2).run(digits_lenet300, x, y, seed=0)
    assert torch.equal(a.x_adv, b.x_adv)


def test_targeted_fab_keeps_the_target_after_shrinking(digits, digits_lenet300) -> None:
    """The final shrink along the ray stops where the point is still predicted as the
    target (not merely misclassified)."""
    x, y = digits.test.x[:60], digits.test.y[:60]
    with torch.no_grad():
        target = digits_lenet300(x).argsort(1, descending=True)[:, 2]  # third-ranked class
    res = FAB(2.0, steps=30, n_target_classes=1).run(digits_lenet300, x, y, target=target, seed=0)
    with torch.no_grad():
        pred = digits_lenet300(res.x_adv).argmax(1)
    ok = res.success & res.clean_correct
    assert int(ok.sum()) >= 50
    assert torch.equal(pred[ok], target[ok])
