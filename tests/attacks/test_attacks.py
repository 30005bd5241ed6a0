"""Attacks: closed-form answers on linear models, agreement with foolbox, API contracts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparserobust.attacks import (
    DDN,
    FGSM,
    PGD,
    Attack,
    CarliniWagnerL2,
    DeepFool,
    MinimizationAttack,
    MinL2,
    get_attack,
    result_from_adversarials,
)
from sparserobust.errors import AttackError
from sparserobust.metrics import median_norm, robust_accuracy

INF = math.inf


# -- linear ground truth --------------------------------------------------------------


def linear_problem(n: int = 24, d: int = 30, k: int = 5, seed: int = 0):
    """A linear classifier and points near the box centre whose nearest decision
    boundary is close, so the [0,1] box never binds."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(k, d, generator=gen) * 3)
        model[1].bias.zero_()
    x = 0.5 + 0.05 * torch.rand(n, 1, d, generator=gen) - 0.025
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y


def closed_form(model: nn.Sequential, x: torch.Tensor, q: float) -> torch.Tensor:
    """min_j (f_c - f_j) / ||w_c - w_j||_q per sample (PAPER.md)."""
    w = model[1].weight.detach()
    with torch.no_grad():
        f = model(x)
    c = f.argmax(1)
    out = torch.full((x.shape[0],), INF)
    for j in range(w.shape[0]):
        dw = w[c] - w[j]
        gap = f.gather(1, c[:, None]).squeeze(1) - f[:, j]
        dist = gap / dw.norm(p=q, dim=1).clamp_min(1e-12)
        out = torch.where(c == j, out, torch.minimum(out, dist))
    return out


def test_linear_problem_keeps_box_slack() -> None:
    model, x, _ = linear_problem()
    d2, d1 = closed_form(model, x, 2), closed_form(model, x, 1)
    # x lies in [0.475, 0.525]: no coordinate of a perturbation this small can hit the box
    assert float(d2.max()) < 0.4 and float(d1.max()) < 0.4


@pytest.mark.parametrize(("norm", "q"), [(2, 2.0), (INF, 1.0)])
def test_deepfool_finds_closed_form_distance_on_linear_model(norm: float, q: float) -> None:
    model, x, y = linear_problem()
    truth = closed_form(model, x, q)
    exact = DeepFool(norm=norm, overshoot=0.0).run(model, x, y)
    assert bool(exact.success.all())
    torch.testing.assert_close(exact.distances, truth, rtol=2e-3, atol=3e-4)
    over = DeepFool(norm=norm).run(model, x, y)  # overshoot 0.02 scales the total step
    torch.testing.assert_close(over.distances, 1.02 * truth, rtol=2e-3, atol=3e-4)


@pytest.mark.parametrize(
    "attack",
    [
        CarliniWagnerL2(binary_search_steps=9, steps=500, initial_const=1.0),
        DDN(steps=300),
        MinL2(),
    ],
    ids=["cw", "ddn", "min-l2"],
)
def test_l2_minimisers_find_closed_form_distance_on_linear_model(attack: Attack) -> None:
    model, x, y = linear_problem()
    truth = closed_form(model, x, 2.0)
    result = attack.run(model, x, y)
    assert bool(result.success.all())
    assert bool((result.distances >= truth * (1 - 1e-4)).all())  # nothing beats the optimum
    torch.testing.assert_close(result.distances, truth, rtol=1e-2, atol=1e-4)


# -- agreement with foolbox on a trained LeNet-300-100 ---------------------------------


def _foolbox_median(model, x, y, fb_attack, norm: float) -> float:
    fb = pytest.importorskip("foolbox")
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    adv = fb_attack(fb)(fmodel, x, y, epsilons=None)[1]
    res = result_from_adversarials(model, x, y, adv, norm=norm, attack="foolbox")
    assert bool(res.success[res.clean_correct].all())
    return median_norm(res)


@pytest.mark.parametrize("norm", [2, INF])
def test_deepfool_median_matches_foolbox(digits, digits_lenet300, norm: float) -> None:
    x, y = digits.test.x, digits.test.y
    ours = DeepFool(norm=norm).run(digits_lenet300, x, y)
    assert float(ours.success[ours.clean_correct].float().mean()) == 1.0
    cls = "L2DeepFoolAttack" if norm == 2 else "LinfDeepFoolAttack"
    theirs = _foolbox_median(
        digits_lenet300, x, y, lambda fb: getattr(fb.attacks, cls)(steps=50, overshoot=0.02), norm
    )
    assert median_norm(ours) == pytest.approx(theirs, rel=0.02)


def test_cw_median_matches_foolbox(digits, digits_lenet300) -> None:
    """Without warm starts and early abort our C&W is foolbox's algorithm: same
    median. Our defaults (warm starts, per-sample abort) stay within 2% of it."""
    x, y = digits.test.x[:120], digits.test.y[:120]
    exact = _foolbox_median(
        digits_lenet300,
        x,
        y,
        lambda fb: fb.attacks.L2CarliniWagnerAttack(steps=200, abort_early=False),
        2.0,
    )
    cold = CarliniWagnerL2(steps=200, warm_start=False, abort_early=False)
    assert median_norm(cold.run(digits_lenet300, x, y)) == pytest.approx(exact, rel=0.01)
    theirs = _foolbox_median(
        digits_lenet300, x, y, lambda fb: fb.attacks.L2CarliniWagnerAttack(steps=200), 2.0
    )
    warm = CarliniWagnerL2(steps=200).run(digits_lenet300, x, y)
    assert median_norm(warm) <= theirs * 1.02


def test_ddn_median_not_larger_than_foolbox(digits, digits_lenet300) -> None:
    x, y = digits.test.x, digits.test.y
    theirs = _foolbox_median(digits_lenet300, x, y, lambda fb: fb.attacks.DDNAttack(steps=100), 2.0)
    plain = DDN(steps=100, abort_early=False, refine_steps=0).run(digits_lenet300, x, y)
    assert median_norm(plain) == pytest.approx(theirs, rel=1e-3)  # the same algorithm
    ours = DDN(steps=100).run(digits_lenet300, x, y)  # early abort + ray bisection
    assert median_norm(ours) <= theirs * 1.005


@pytest.mark.slow
def test_deepfool_and_cw_match_foolbox_on_mnist(mnist_root) -> None:
    from sparserobust.data import load_dataset
    from sparserobust.models import build_model
    from sparserobust.training import TrainSettings, train_model

    data = load_dataset("mnist", mnist_root)
    info = data.info
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    train_model(model, data.train.head(20000), TrainSettings(epochs=2, seed=0), progress=False)
    model.eval()
    x, y = data.test.x[:100], data.test.y[:100]
    df = _foolbox_median(
        model, x, y, lambda fb: fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02), 2.0
    )
    assert median_norm(DeepFool().run(model, x, y)) == pytest.approx(df, rel=0.02)
    # C&W (9 binary-search steps x 1000 in both) on the first 50: the slowest peer check
    xc, yc = x[:50], y[:50]
    cw = _foolbox_median(
        model, xc, yc, lambda fb: fb.attacks.L2CarliniWagnerAttack(steps=1000), 2.0
    )
    assert median_norm(CarliniWagnerL2().run(model, xc, yc)) == pytest.approx(cw, rel=0.02)


# -- fixed-epsilon curves ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "epsilons"),
    [
        (FGSM(), [0.02, 0.05, 0.1, 0.2, 0.3, 1.0]),
        (PGD(norm=INF, steps=20), [0.02, 0.05, 0.1, 0.2, 1.0]),
        (PGD(norm=2, steps=20), [0.25, 0.5, 1.0, 2.0, 8.0]),
    ],
    ids=["fgsm", "pgd-linf", "pgd-l2"],
)
def test_robust_accuracy_non_increasing_and_reaches_zero(
    digits, digits_lenet300, attack: Attack, epsilons: list[float]
) -> None:
    x, y = digits.test.x, digits.test.y
    result = attack.run(digits_lenet300, x, y, epsilons=epsilons, seed=0)
    acc = list(robust_accuracy(result).values())
    assert acc[0] <= float(result.clean_correct.float().mean())
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))
    assert acc[-1] == 0.0
    assert acc[0] > acc[-2]  # the curve actually falls


def test_minimal_norm_robust_accuracy_curve(digits, digits_lenet300) -> None:
    result = DeepFool().run(digits_lenet300, digits.test.x, digits.test.y)
    curve = robust_accuracy(result, [0.1, 0.5, 1.0, 2.0, 10.0])
    acc = list(curve.values())
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))
    assert acc[0] > 0.5 and acc[-1] == 0.0


def test_pgd_not_weaker_than_fgsm(digits, digits_lenet300) -> None:
    x, y = digits.test.x, digits.test.y
    eps = [0.03, 0.05, 0.1, 0.15]
    fgsm = robust_accuracy(FGSM().run(digits_lenet300, x, y, epsilons=eps))
    pgd = robust_accuracy(PGD(steps=40).run(digits_lenet300, x, y, epsilons=eps, seed=0))
    assert all(pgd[e] <= fgsm[e] for e in fgsm)
    assert sum(pgd.values()) < sum(fgsm.values())


# -- API contracts -----------------------------------------------------------------------


class _Liar(MinimizationAttack):
    """Returns the clean input unchanged; the driver must not count it as a success."""

    name = "liar"

    def attack_batch(self, model, x, labels, targeted, gen):
        return x + 0.0


def test_success_is_reverified_by_forward_pass(digits, digits_lenet300) -> None:
    x, y = digits.test.x[:100], digits.test.y[:100]
    lie = _Liar().run(digits_lenet300, x, y)
    assert bool((lie.success == ~lie.clean_correct).all())  # only the misclassified ones
    assert bool(torch.isinf(lie.distances[lie.clean_correct]).all())
    for attack in (DeepFool(), DDN(steps=50), CarliniWagnerL2(steps=50, binary_search_steps=3)):
        res = attack.run(digits_lenet300, x, y)
        with torch.no_grad():
            pred = digits_lenet300(res.x_adv).argmax(1)
        assert bool((res.success == (pred != y)).all())
        dist = (res.x_adv - x).flatten(1).norm(dim=1)
        torch.testing.assert_close(dist[res.success], res.distances[res.success])
        assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


class _ModeProbe(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: set[bool] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(self.training)
        return self.inner(x)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "deepfool", "cw", "ddn", "min-l2"])
def test_eval_mode_during_attack_and_restored(digits, digits_lenet300, name: str) -> None:
    probe = _ModeProbe(digits_lenet300).train()
    params = {"cw": {"steps": 5, "binary_search_steps": 1}, "ddn": {"steps": 5}}.get(name, {})
    attack = get_attack(name, **params)
    eps = [0.1] if attack.fixed_epsilon else None
    attack.run(probe, digits.test.x[:20], digits.test.y[:20], epsilons=eps)
    assert probe.seen == {False}
    assert probe.training and probe.inner.training
    digits_lenet300.eval()


def test_same_seed_same_output(digits, digits_lenet300) -> None:
    x, y = digits.test.x[:80], digits.test.y[:80]
    attack = PGD(norm=2, steps=5, restarts=2)
    a = attack.run(digits_lenet300, x, y, epsilons=[0.3, 0.6], seed=3)
    b = attack.run(digits_lenet300, x, y, epsilons=[0.3, 0.6], seed=3)
    c = attack.run(digits_lenet300, x, y, epsilons=[0.3, 0.6], seed=4)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    ("name", "norm", "params", "eps"),
    [
        ("pgd", 2, {"steps": 50}, [4.0]),
        ("pgd", INF, {"steps": 40}, [0.5]),
        ("deepfool", 2, {}, None),
        ("cw", 2, {"steps": 100}, None),
        ("ddn", 2, {"steps": 100}, None),
    ],
)
def test_targeted_attacks_hit_the_target(digits, digits_lenet300, name, norm, params, eps) -> None:
    x, y = digits.test.x[:60], digits.test.y[:60]
    target = (y + 3) % 10
    res = get_attack(name, norm, **params).run(digits_lenet300, x, y, target=target, epsilons=eps)
    success = res.success if eps is None else res.success[-1]
    x_adv = res.x_adv if eps is None else res.x_adv[-1]
    with torch.no_grad():
        pred = digits_lenet300(x_adv).argmax(1)
    assert float(success.float().mean()) >= 0.9
    assert bool((pred[success] == target[success]).all())


def test_linear_fixed_epsilon_matches_closed_form() -> None:
    """On a linear model FGSM succeeds exactly when eps reaches the l_inf distance."""
    model, x, y = linear_problem(k=2)
    truth = closed_form(model, x, 1.0)
    eps = sorted({float(truth.median()) * f for f in (0.5, 0.9, 1.1, 2.0)})
    res = FGSM().run(model, x, y, epsilons=eps)
    for i, e in enumerate(eps):
        assert torch.equal(res.success[i], truth <= e)


# -- errors ------------------------------------------------------------------------------


def test_bad_inputs_raise_attack_error(digits, digits_lenet300) -> None:
    x, y = digits.test.x[:4], digits.test.y[:4]
    m = digits_lenet300
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    cases = [
        (lambda: DeepFool().run(m, bad, y), "NaN"),
        (lambda: DeepFool().run(m, x * 2 + 0.1, y), r"\[0,1\]"),
        (lambda: DeepFool().run(m, x, y[:3]), "shape"),
        (lambda: FGSM().run(m, x, y, epsilons=[0.1, 0.0]), "> 0"),
        (lambda: FGSM().run(m, x, y), "epsilons"),
        (lambda: DeepFool().run(m, x, y + 10), "classes"),
        (lambda: DeepFool().run(m, x, y, num_classes=5), "10 class scores"),
        (lambda: DeepFool().run(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), x, y), "at least 2"),
        (lambda: DeepFool().run(nn.Flatten(start_dim=0), x, y), "logits"),
        (lambda: DeepFool().run(m, x, y, target=y), "differ"),
        (lambda: get_attack("cw", "inf"), "l2"),
        (lambda: get_attack("nope"), "unknown attack"),
    ]
    for fn, pattern in cases:
        with pytest.raises(AttackError, match=pattern):
            fn()


def test_attack_checkpoint_defaults_and_pass_through(tmp_path) -> None:  # noqa: ANN001
    """attack_checkpoint: the norm reaches the attack, a fixed-epsilon attack without
    epsilons gets the dataset's default grid, n=None takes the whole test split."""
    from sparserobust.attacks.api import DEFAULT_EPSILONS, attack_checkpoint
    from sparserobust.checkpoint import save_checkpoint
    from sparserobust.errors import ConfigError
    from sparserobust.models import build_model
    from tests.pruning.test_pruning import digits_meta

    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10, [0.305], [0.3779])
    path = save_checkpoint(tmp_path / "d.st", model, digits_meta())
    out = attack_checkpoint(path, "pgd", norm="2", n=20, params={"steps": 2})
    assert (out["attack"], out["norm"], out["n"]) == ("pgd", "l2", 20)
    assert out["epsilons"] == list(DEFAULT_EPSILONS[("*", 2.0)]) == [0.5, 1.0, 2.0]
    assert (out["checkpoint"], out["model"], out["dataset"]) == (str(path), "lenet300", "digits")
    out = attack_checkpoint(path, "pgd", epsilons=[0.01], n=None, params={"steps": 1})
    assert (out["norm"], out["n"], out["epsilons"]) == ("linf", 364, [0.01])
    with pytest.raises(ConfigError, match="--n must be >= 1, got 0"):
        attack_checkpoint(path, "pgd", n=0)


def test_cw_settings_last_search_and_warm_start() -> None:
    """C&W's documented defaults and checks; with 10 or more searches the last one uses
    the upper bound (1e10 where nothing was found yet, as foolbox); warm_start=False
    restarts every search from x."""
    from sparserobust.attacks.cw import CarliniWagnerL2

    cw = CarliniWagnerL2()
    assert (cw.binary_search_steps, cw.steps, cw.stepsize, cw.confidence) == (9, 1000, 0.01, 0)
    assert (cw.initial_const, cw.abort_early, cw.warm_start) == (1e-3, True, True)
    for bad in ({"stepsize": 0}, {"initial_const": 0}, {"confidence": -1}, {"steps": 0}):
        with pytest.raises(AttackError, match="C&W needs"):
            CarliniWagnerL2(**bad)

    model, x, y = linear_problem(n=8)
    # a constant of 1e-12 x 10^8 is still far too small for 20 steps to cross the
    # boundary; only the last search's jump to 1e10 does it
    tiny = {"steps": 20, "stepsize": 0.05, "initial_const": 1e-12, "abort_early": False}
    assert not bool(CarliniWagnerL2(binary_search_steps=9, **tiny).run(model, x, y).success.any())
    assert bool(CarliniWagnerL2(binary_search_steps=10, **tiny).run(model, x, y).success.all())

    settings = {"binary_search_steps": 3, "steps": 30, "initial_const": 1.0}
    warm = CarliniWagnerL2(**settings).run(model, x, y)
    cold = CarliniWagnerL2(warm_start=False, **settings).run(model, x, y)
    assert not torch.equal(warm.x_adv, cold.x_adv)


def test_documented_defaults_and_limits() -> None:
    """The defaults the docstrings and docs/ promise (DeepFool's 50 steps and 10
    candidates, FAB's AutoAttack settings, MinL2's DeepFool + 1000-step DDN and 10
    refinement steps), and the smallest accepted values."""
    from sparserobust.attacks.ddn import DDN as DDNAttack
    from sparserobust.attacks.fab import FAB, FABTargeted

    df = DeepFool()
    assert (df.norm, df.steps, df.overshoot, df.candidates, df.batch_size) == (
        2.0,
        50,
        0.02,
        10,
        1000,
    )
    for fab in (FAB(), FABTargeted()):
        assert (fab.norm, fab.steps, fab.n_target_classes, fab.restarts) == (INF, 100, 9, 1)
        assert (fab.alpha_max, fab.eta, fab.beta, fab.batch_size) == (0.1, 1.05, 0.9, 1000)
    assert FAB(n_target_classes=1, alpha_max=0.0).n_target_classes == 1
    minl2 = MinL2()
    assert (minl2.refine_steps, minl2.batch_size) == (10, 1000)
    first, second = minl2.attacks
    assert isinstance(first, DeepFool) and first.steps == 50
    assert isinstance(second, DDNAttack)
    assert (second.steps, second.abort_early, second.refine_steps) == (1000, False, 0)


def test_result_from_adversarials_norm_dtype_and_shape_check() -> None:
    """Peer adversarials in float64 are compared in float32 like our own; the result
    carries the norm; a wrong shape is an AttackError naming both shapes."""
    model, x, y = linear_problem(n=6)
    truth = closed_form(model, x, 2.0)
    with torch.no_grad():
        w = model[1].weight
        target = model(x).topk(2, dim=1).indices[:, 1]
        d = w[target] - w[y]
        gap = (model(x).gather(1, y[:, None]) - model(x).gather(1, target[:, None])).squeeze(1)
        step = (gap * 1.01 / d.pow(2).sum(1))[:, None] * d
    adv = (x + step[:, None, :]).double()
    res = result_from_adversarials(model, x.double(), y, adv, norm=2.0, attack="peer")
    assert res.norm == 2.0 and res.attack == "peer" and bool(res.success.all())
    assert bool((res.distances >= truth * (1 - 1e-4)).all())
    with pytest.raises(AttackError, match=r"x_adv must have the inputs' shape \(6, 1, 30\)"):
        result_from_adversarials(model, x, y, adv[:3], norm=2.0, attack="peer")


def test_pgd_random_start_fills_the_ball_and_more_defaults() -> None:
    from sparserobust.attacks.pgd import random_start

    gen = torch.Generator().manual_seed(0)
    x = torch.full((500, 1, 4, 4), 0.5)
    d = random_start(x, INF, 0.1, gen) - x
    assert float(d.abs().max()) <= 0.1 + 1e-7
    assert float(d.min()) < -0.095 and float(d.max()) > 0.095 and abs(float(d.mean())) < 0.005
    d2 = (random_start(x, 2.0, 0.3, gen) - x).flatten(1).norm(dim=1)
    assert float(d2.max()) <= 0.3 + 1e-6 and float(d2.max()) > 0.29
    # uniform in the 16-d ball: P(radius < 0.3 * 0.9) = 0.9^16 = 0.185
    assert 0.12 < float((d2 < 0.27).float().mean()) < 0.25
    pgd = PGD()
    assert (pgd.steps, pgd.random_start, pgd.restarts, PGD(norm=2).steps) == (40, True, 1, 50)
    with pytest.raises(AttackError, match="DeepFool needs"):
        DeepFool(overshoot=-0.1)


def test_pgd_one_run_flags_exactly_the_adversarial_points(digits, digits_lenet300) -> None:
    """``found`` (used by restarts to drop finished points) must say which returned
    points are adversarial: those found mid-run and those found at the last step."""
    from sparserobust.attacks import PGD

    x, y = digits.test.x[:120], digits.test.y[:120]
    keep = digits_lenet300(x).argmax(1) == y
    x, y = x[keep], y[keep]
    for steps in (1, 5):
        gen = torch.Generator().manual_seed(0)
        out, found = PGD(steps=steps)._one_run(digits_lenet300, x, y, False, gen, 0.08)
        with torch.no_grad():
            adversarial = digits_lenet300(out).argmax(1) != y
        assert 0 < int(found.sum()) < len(y)
        assert torch.equal(found, adversarial)


def test_batch_size_one_is_allowed_and_ddn_defaults() -> None:
    from sparserobust.attacks import DDN, PGD

    model, x, y = linear_problem(n=6)
    one = PGD(steps=5, batch_size=1).run(model, x, y, epsilons=[0.1], seed=0)
    many = PGD(steps=5).run(model, x, y, epsilons=[0.1], seed=0)
    assert torch.equal(one.success, many.success)
    assert DDN().steps == 100 and DDN().gamma == 0.05
    with pytest.raises(AttackError):
        DDN(gamma=1.0)


def test_min_l2_names_what_it_cannot_combine() -> None:
    from sparserobust.attacks import PGD, DeepFool, MinL2

    with pytest.raises(AttackError, match=r"got \['pgd'\]"):
        MinL2(attacks=[DeepFool(), PGD()])
    with pytest.raises(AttackError, match="got none"):
        MinL2(attacks=[])
