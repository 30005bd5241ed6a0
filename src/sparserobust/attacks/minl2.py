"""Per-sample smallest l2 adversarial over several l2 attacks, refined by a line search."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparserobust.attacks.base import MinimizationAttack, clearly_adversarial, shrink_along_ray
from sparserobust.attacks.ddn import DDN
from sparserobust.attacks.deepfool import DeepFool
from sparserobust.attacks.norms import expand_like
from sparserobust.errors import AttackError


class MinL2(MinimizationAttack):
    """Minimal-l2 estimate: run each l2 attack, keep per sample the smallest
    verified adversarial, then shrink it along its ray with a bisection.

    Default attacks: DeepFool l2 (50 steps) and DDN (1000 steps, no early abort).
    Distances are
    l2 in [0,1] pixel space.
    """

    name = "min-l2"
    norm = 2.0

    def __init__(
        self,
        attacks: Sequence[MinimizationAttack] | None = None,
        refine_steps: int = 10,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.attacks = (
            list(attacks)
            if attacks is not None
            else [DeepFool(), DDN(steps=1000, abort_early=False, refine_steps=0)]
        )
        self.refine_steps = int(refine_steps)
        bad = [a.name for a in self.attacks if a.norm != 2.0 or a.fixed_epsilon]
        if not self.attacks or bad:
            raise AttackError(f"min-l2 combines l2 minimisation attacks only, got {bad or 'none'}")

    def params(self) -> dict[str, object]:
        return {
            "attacks": ",".join(f"{a.name}({a.params()})" for a in self.attacks),
            "refine_steps": self.refine_steps,
            "batch_size": self.batch_size,
        }

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
    ) -> torch.Tensor:
        best = x.clone()
        best_l2 = torch.full((x.shape[0],), torch.inf, device=x.device)
        for attack in self.attacks:
            adv = attack.attack_batch(model, x, labels, targeted, gen).detach()
            adv = shrink_along_ray(model, x, adv, labels, targeted, self.refine_steps)
            with torch.no_grad():
                ok = clearly_adversarial(model(adv), labels, targeted)
            l2 = torch.where(ok, (adv - x).flatten(1).norm(dim=1), torch.inf)
            better = l2 < best_l2
            best = torch.where(expand_like(better, x), adv, best)
            best_l2 = torch.where(better, l2, best_l2)
        return best
