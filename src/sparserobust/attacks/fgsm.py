"""Fast Gradient Sign Method (Goodfellow et al. 2015): one l_inf step per epsilon."""

from __future__ import annotations

import torch
from torch import nn

from sparserobust.attacks.base import FixedEpsilonAttack, ce_loss, loss_and_grad
from sparserobust.attacks.norms import INF


class FGSM(FixedEpsilonAttack):
    """l_inf FGSM: ``x + eps * sign(grad CE)`` clipped to [0,1], for each epsilon.

    Deterministic (the seed is unused). Epsilons are l_inf radii in [0,1] pixel units.
    """

    name = "fgsm"
    norm = INF

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        _, _, grad = loss_and_grad(model, x, ce_loss(labels, targeted))
        return (x + epsilon * grad.sign()).clamp(0.0, 1.0)
