"""Adversarial attacks: batched PyTorch, [0,1] box, per-sample verified results.

Typical use::

    from sparserobust.attacks import get_attack
    from sparserobust.metrics import summarize

    result = get_attack("pgd", norm="inf").run(model, x, y, epsilons=[0.1, 0.2], seed=0)
    summary = summarize(result)            # plain JSON-able dict
"""

from sparserobust.attacks.apgd import APGD, APGDTargeted
from sparserobust.attacks.autoattack import AutoAttack, AutoAttackFast
from sparserobust.attacks.base import Attack, FixedEpsilonAttack, MinimizationAttack
from sparserobust.attacks.cw import CarliniWagnerL2
from sparserobust.attacks.ddn import DDN
from sparserobust.attacks.deepfool import DeepFool
from sparserobust.attacks.fab import FAB, FABTargeted
from sparserobust.attacks.fgsm import FGSM
from sparserobust.attacks.minl2 import MinL2
from sparserobust.attacks.norms import lp_norms, norm_name, parse_norm
from sparserobust.attacks.pgd import PGD
from sparserobust.attacks.registry import (
    attack_names,
    attack_norms,
    attack_settings,
    get_attack,
    is_fixed_epsilon,
)
from sparserobust.attacks.result import AttackResult, result_from_adversarials
from sparserobust.attacks.square import Square

__all__ = [
    "APGD",
    "DDN",
    "FAB",
    "FGSM",
    "PGD",
    "APGDTargeted",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "AutoAttackFast",
    "CarliniWagnerL2",
    "DeepFool",
    "FABTargeted",
    "FixedEpsilonAttack",
    "MinimizationAttack",
    "MinL2",
    "Square",
    "attack_names",
    "attack_norms",
    "attack_settings",
    "get_attack",
    "is_fixed_epsilon",
    "lp_norms",
    "norm_name",
    "parse_norm",
    "result_from_adversarials",
]
