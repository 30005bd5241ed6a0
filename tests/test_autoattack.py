"""AutoAttack (standard version) against the official code as the oracle: robust
accuracy on 364 digits images within 0.5 points, l_inf and l2; which attack broke
each point; Square's AutoAttack schedule."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from sparserobust.attacks import APGD, AutoAttack, get_attack
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
    for bad in ({"attacks": "apgd-ce,pgd"}, {"attacks": ""}, {"steps": 0}, {"square_queries": 0}):
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
