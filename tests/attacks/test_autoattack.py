"""AutoAttack (standard version) against the official code as the oracle: robust
accuracy on 364 digits images within 0.5 points, l_inf and l2; which attack broke
each point; Square's AutoAttack schedule."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from sparserobust.attacks import APGD, AutoAttack, AutoAttackFast, get_attack
from sparserobust.attacks.autoattack import MISCLASSIFIED, ROBUST, STANDARD
from sparserobust.attacks.square import Square, p_schedule
from sparserobust.errors import AttackError

INF = math.inf


def _official_robust(model, x, y, norm: float, eps: float) -> torch.Tensor:
    from pyautoattack import AutoAttack as Official

    official = Official(
        model, eps=eps, norm="Linf" if norm == INF else "L2", seed=0, version="standard"
    )
    x_adv, _ = official.run_standard_evaluation(x, y, batch_size=1000)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize(("norm", "eps"), [(INF, 0.12), (2.0, 0.8)])
def test_autoattack_matches_official(digits, digits_lenet300, norm: float, eps: float) -> None:
    model, x, y = digits_lenet300, digits.test.x, digits.test.y
    assert x.shape[0] >= 300
    res = AutoAttack(norm=norm).run(model, x, y, epsilons=[eps], seed=0)
    ours = res.clean_correct & ~res.success[0]
    official = _official_robust(model, x, y, norm, eps)
    assert 0.1 < float(ours.float().mean()) < 0.6  # the radius is informative
    # within 0.5 points (one image of 364 is 0.27 points)
    assert abs(float(ours.float().mean()) - float(official.float().mean())) <= 0.005
    assert int((ours & ~official).sum()) <= 1  # points only the official code breaks

    broken_by = res.details["broken_by"]
    assert isinstance(broken_by, list) and len(broken_by[0]) == x.shape[0]
    names = Counter(broken_by[0])
    assert set(names) <= {*STANDARD, ROBUST, MISCLASSIFIED}
    assert names[ROBUST] == int(ours.sum())
    assert names[MISCLASSIFIED] == int((~res.clean_correct).sum())
    assert names["apgd-ce"] > 0
    # the fast version (not AutoAttack) on the same points: within the same 0.5 points
    fast = get_attack("autoattack-fast", norm).run(model, x, y, epsilons=[eps], seed=0)
    fast_robust = fast.clean_correct & ~fast.success[0]
    assert abs(float(fast_robust.float().mean()) - float(official.float().mean())) <= 0.005
    assert int((fast_robust & ~official).sum()) <= 1
    assert set(fast.details["seconds_by_attack"]) == {"apgd-ce", "apgd-t", "square"}

    # APGD-CE runs first with the same seed: everything it breaks alone, autoattack breaks
    apgd = APGD(norm=norm).run(model, x, y, epsilons=[eps], seed=0)
    assert bool((res.success[0] | ~apgd.success[0]).all())
    assert int(res.success[0].sum()) >= int(apgd.success[0].sum())


def test_broken_by_follows_each_epsilon(digits, digits_lenet300) -> None:
    x, y = digits.test.x[:40], digits.test.y[:40]
    attack = AutoAttack(attacks="apgd-ce,apgd-t", steps=20, n_target_classes=2)
    res = attack.run(digits_lenet300, x, y, epsilons=[0.05, 0.3], seed=0)
    for e in range(2):
        row = res.details["broken_by"][e]
        assert [n not in (ROBUST, MISCLASSIFIED) for n in row] == (
            res.success[e] & res.clean_correct
        ).tolist()
    assert float(res.success[1].float().mean()) > float(res.success[0].float().mean())
    assert set(res.details["seconds_by_attack"]) == {"apgd-ce", "apgd-t"}


def test_square_uses_autoattack_schedule() -> None:
    from pyautoattack import AutoAttack as Official

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    official = Official(model, eps=0.1, norm="Linf", seed=0, version="standard").square
    ours = next(a for n, a in AutoAttack()._attacks if n == "square")
    assert isinstance(ours, Square)
    assert (ours.steps, ours.p_init, ours.rescale_schedule) == (
        official.n_queries,
        official.p_init,
        official.rescale_schedule,
    )
    for it in range(official.n_queries):
        assert p_schedule(ours.p_init, it, ours.steps, ours.rescale_schedule) == (
            official.p_selection(it)
        )


def test_bad_settings_and_targets_raise(digits, digits_lenet300) -> None:
    assert isinstance(get_attack("autoattack", "2"), AutoAttack)
    for bad in (
        {"attacks": "apgd-ce,pgd"},
        {"attacks": ""},
        {"steps": 0},
        {"square_queries": 0},
    ):
        with pytest.raises(AttackError):
            AutoAttack(**bad)
    x, y = digits.test.x[:5], digits.test.y[:5]
    with pytest.raises(AttackError):
        AutoAttack().run(digits_lenet300, x, y, epsilons=[0.1], target=(y + 1) % 10)


def test_autoattack_builds_its_attacks_from_its_settings() -> None:
    """Each standard attack gets AutoAttack's norm, steps, target count, queries and batch
    size (mutation testing found a dropped n_target_classes or batch_size unnoticed)."""
    from sparserobust.attacks.apgd import APGD, APGDTargeted
    from sparserobust.attacks.autoattack import AutoAttack
    from sparserobust.attacks.fab import FABTargeted
    from sparserobust.attacks.square import Square

    aa = AutoAttack("2", steps=7, n_target_classes=3, square_queries=11, batch_size=5)
    subs = dict(aa._attacks)
    assert list(subs) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a.norm == 2.0 and a.batch_size == 5 for a in subs.values())
    assert isinstance(subs["apgd-ce"], APGD) and subs["apgd-ce"].loss == "ce"
    assert isinstance(subs["apgd-t"], APGDTargeted)
    assert isinstance(subs["fab-t"], FABTargeted) and isinstance(subs["square"], Square)
    assert [subs[n].steps for n in ("apgd-ce", "apgd-t", "fab-t")] == [7, 7, 7]
    assert subs["apgd-t"].n_target_classes == 3 and subs["fab-t"].n_target_classes == 3
    assert (subs["square"].steps, subs["square"].p_init) == (11, 0.8)
    assert subs["square"].rescale_schedule is False

    fast = dict(AutoAttackFast()._attacks)
    assert list(fast) == ["apgd-ce", "apgd-t", "square"]
    assert (fast["square"].steps, fast["square"].rescale_schedule) == (1000, True)
    assert fast["apgd-t"].n_target_classes == 9 and fast["apgd-t"].steps == 100
    # explicit settings win over the version's
    mixed = dict(AutoAttackFast(attacks="apgd-ce,square", square_queries=7)._attacks)
    assert list(mixed) == ["apgd-ce", "square"] and mixed["square"].steps == 7


def test_autoattack_checks_num_classes_and_rounds_seconds() -> None:
    from sparserobust.attacks.autoattack import AutoAttack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    aa = AutoAttack("inf", attacks="apgd-ce", steps=2)
    with pytest.raises(AttackError, match="3 class scores but the data has 10 classes"):
        aa.run(model, x, y, epsilons=[0.1], num_classes=10)
    result = aa.run(model, x, y, epsilons=[0.1], num_classes=3)
    seconds = result.details["seconds_by_attack"]["apgd-ce"]
    assert isinstance(seconds, float) and seconds == round(seconds, 3)


def test_skip_certified_skips_exactly_the_crown_certified_points(
    digits, digits_lenet300, monkeypatch
) -> None:
    from sparserobust.attacks.autoattack import CERTIFIED, CERTIFY_MARGIN
    from sparserobust.verify import certify

    # CROWN always pays here, whatever this machine's timings (the gate: next test)
    monkeypatch.setattr(AutoAttack, "_survivor_cost", lambda self, per_point: math.inf)
    model, x, y = digits_lenet300, digits.test.x[:100], digits.test.y[:100]
    small = {"steps": 20, "n_target_classes": 3, "square_queries": 200}
    eps = [0.02, 0.06]
    res = AutoAttack(skip_certified=True, **small).run(model, x, y, epsilons=eps, seed=0)
    plain = AutoAttack(**small).run(model, x, y, epsilons=eps, seed=0)
    for e, (codes, eps_e) in enumerate(zip(res.details["broken_by"], eps, strict=True)):
        crown = certify(model, x, y, epsilon=eps_e, norm="inf")
        sure = (crown.margins.min(1).values > CERTIFY_MARGIN) & crown.clean_correct
        coded = torch.tensor([c == CERTIFIED for c in codes])
        assert torch.equal(coded, sure)  # no more, no fewer, at each eps on its own
        # no attack breaks a certified point, so the skipped ones stay robust
        assert not bool((plain.success[e] & coded).any())
        assert abs(int(res.success[e].sum()) - int(plain.success[e].sum())) <= 2
    n_cert = [Counter(c)[CERTIFIED] for c in res.details["broken_by"]]
    assert n_cert[0] > n_cert[1] > 0  # the test exercises the skip at both radii
    assert "crown" in res.details["seconds_by_attack"]


def test_skip_certified_on_a_model_crown_cannot_bound(digits, digits_lenet300) -> None:
    from sparserobust.attacks.autoattack import CERTIFIED

    model = torch.nn.Sequential(digits_lenet300, torch.nn.Tanh())  # same argmax, no CROWN
    x, y = digits.test.x[:40], digits.test.y[:40]
    attack = AutoAttack(skip_certified=True, steps=10, n_target_classes=2, square_queries=50)
    res = attack.run(model, x, y, epsilons=[0.02], seed=0)
    codes = Counter(res.details["broken_by"][0])
    assert codes[CERTIFIED] == 0 and codes[ROBUST] > 0
    with pytest.raises(AttackError, match="skip_certified"):
        AutoAttack(skip_certified="yes")  # type: ignore[arg-type]


def test_skip_certified_stops_where_crown_does_not_pay(
    digits, digits_lenet300, monkeypatch
) -> None:
    """Where CROWN saves less than it costs, it bounds the probe points only and the rest
    are attacked; the estimate it is judged by follows the attacks' budgets."""
    from sparserobust.attacks.autoattack import CERTIFIED, CERTIFY_PROBE

    aa = AutoAttack(steps=100, n_target_classes=9, square_queries=5000)
    assert aa._survivor_cost(0.5) == pytest.approx(2 * 0.5 * (9 + 9 + 25))
    fast = AutoAttackFast(steps=50)
    assert fast._survivor_cost(0.5) == pytest.approx(2 * 0.5 * (9 + 10))

    model, x, y = digits_lenet300, digits.test.x[:100], digits.test.y[:100]
    small = {"steps": 10, "n_target_classes": 2, "square_queries": 50}
    monkeypatch.setattr(AutoAttack, "_survivor_cost", lambda self, per_point: 0.0)
    res = AutoAttack(skip_certified=True, **small).run(model, x, y, epsilons=[0.02], seed=0)
    codes = res.details["broken_by"][0]
    monkeypatch.setattr(AutoAttack, "_survivor_cost", lambda self, per_point: math.inf)
    full = AutoAttack(skip_certified=True, **small).run(model, x, y, epsilons=[0.02], seed=0)
    full_codes = full.details["broken_by"][0]
    # the probe: the first CERTIFY_PROBE points APGD-CE left robust
    left = [i for i, c in enumerate(full_codes) if c not in (MISCLASSIFIED, "apgd-ce")]
    probe, rest = set(left[:CERTIFY_PROBE]), left[CERTIFY_PROBE:]
    assert [i for i, c in enumerate(codes) if c == CERTIFIED] == [
        i for i in sorted(probe) if full_codes[i] == CERTIFIED
    ]
    assert any(full_codes[i] == CERTIFIED for i in rest)  # the gate changed something
    assert all(codes[i] != CERTIFIED for i in rest)


def test_config_picks_the_sub_attacks_and_fast_has_its_own_name() -> None:
    """``attacks`` is a config setting; ``autoattack-fast`` results never carry the
    ``autoattack`` name (a reader would take them for the standard version)."""
    from sparserobust.config import config_from_dict
    from sparserobust.measurements.attack import build_attack

    cfg = config_from_dict(
        {
            "name": "aa-settings",
            "dataset": "digits",
            "model": "lenet300",
            "eval": {
                "attacks": [
                    {"name": "autoattack", "eps": [0.1], "params": {"attacks": "apgd-ce,square"}},
                    {"name": "autoattack-fast", "eps": [0.1]},
                ]
            },
        }
    )
    standard, fast = (build_attack(a) for a in cfg.eval.attacks)
    assert isinstance(standard, AutoAttack) and not isinstance(standard, AutoAttackFast)
    assert [n for n, _ in standard._attacks] == ["apgd-ce", "square"]
    assert standard.square_queries == 5000
    assert isinstance(fast, AutoAttackFast) and fast.name == "autoattack-fast"
    assert [n for n, _ in fast._attacks] == ["apgd-ce", "apgd-t", "square"]
