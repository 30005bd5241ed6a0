"""The study's ``verify`` measurement with ``method: bab`` (issue 28, requirement 6):
cheap deciders first (a misclassified point, the PGD pre-check, CROWN), then branch and
bound; every point says which step decided it, and on every point the MILP also decides
the verdicts agree. ``method: milp`` stays the default, so stored results keep their
identity (tests/test_registry_contract.py pins the committed configs)."""

from __future__ import annotations

import pytest
from torch import nn

from sparserobust.config import config_from_dict
from sparserobust.errors import ConfigError
from sparserobust.measurements import plan_cells
from sparserobust.measurements.verify import verify_points

DECIDED = ("verified", "counterexample")


def test_bab_decides_what_the_milp_decides_and_says_how(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:12], digits.test.y[:12]
    # at eps 0.08 the MILP leaves some of these points open after 3 s (3 even at 20 s);
    # branch and bound decides each in under a second on a free core (20 s cap: slack)
    runs = {
        m: verify_points(
            digits_lenet300, x, y, epsilons=[0.08], n_exact=12, time_limit=t, method=m
        )["epsilons"][0]["exact"]  # fmt: skip
        for m, t in (("milp", 3.0), ("bab", 20.0))
    }
    milp, bab = runs["milp"], runs["bab"]
    both = 0
    for pm, pb in zip(milp["points"], bab["points"], strict=True):
        assert pb["by"] in ("clean", "attack", "crown", "alpha", "bab")
        if pm["status"] in DECIDED and pb["status"] in DECIDED:
            both += 1
            assert pm["status"] == pb["status"], (pm, pb)
    assert both >= 7
    assert bab["resolved_share"] == 1.0 and bab["timeout"] == 0
    assert milp["timeout"] >= 1
    # every point names its step, and the search itself decided some
    assert sum(bab["by"].values()) == 12
    assert bab["by"]["alpha"] + bab["by"]["bab"] >= 3
    # the cheap steps are shared: the same points fall to the attack and to CROWN
    for step in ("clean", "attack", "crown"):
        assert bab["by"][step] == milp["by"][step]


def study(verify: dict) -> dict:
    return {
        "name": "v",
        "dataset": "digits",
        "model": "lenet300",
        "eval": {"n": 10, "attacks": [], "measurements": {"verify": verify}},
    }


def test_the_method_is_part_of_the_result_identity_only_when_it_is_not_the_default() -> None:
    def params(verify: dict) -> dict:
        (cell,) = [c for c in plan_cells(config_from_dict(study(verify)).eval, 0)
                   if c.key.startswith("verify")]  # fmt: skip
        return cell.params

    base = {"epsilons": [0.05], "n_exact": 5}
    assert params(base) == params({**base, "method": "milp"})
    assert "method" not in params(base)
    assert params({**base, "method": "bab"})["method"] == "bab"


@pytest.mark.parametrize(
    ("verify", "words"),
    [
        ({"epsilons": [0.05], "method": "exhaustive"}, "method: must be milp or bab"),
        ({"epsilons": [0.05], "method": "bab", "tighten": True}, "tightens the MILP only"),
    ],
)
def test_bad_methods_are_one_line_errors(verify: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_from_dict(study(verify))
