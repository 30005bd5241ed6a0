"""The attack driver: the :class:`Attack` base class with its one entry point
:meth:`Attack.run`, the two attack families, and the helpers attacks share (seeded
generators, input gradients, the safety margin, bisection along a ray). The result
record is :mod:`sparserobust.attacks.result`, norms and projections
:mod:`sparserobust.attacks.norms`.

Every attack works on any ``nn.Module`` classifier that maps a batch of inputs
in the [0,1] box, shape ``(N, ...)``, to logits of shape ``(N, K)``. Norms are
measured in [0,1] pixel space on the flattened input: ``p = 2`` is the l2
(Euclidean) distance, ``p = inf`` the largest absolute pixel change.

Two families share one entry point, :meth:`Attack.run`:

* minimisation attacks (DeepFool, C&W, DDN, min-l2) search the smallest
  perturbation per sample and report its norm;
* fixed-epsilon attacks (FGSM, PGD, Square) try every epsilon of a list and report
  per-sample success for each.

Every success in the returned :class:`AttackResult` has been re-verified by a
forward pass of the model on the returned adversarial input.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.attacks.norms import INF, NORM_TOL, expand_like, lp_norms, project
from sparserobust.attacks.result import (
    AttackResult,
    batched_logits,
    check_inputs,
    check_logits,
    is_adversarial,
    keep_successes,
)
from sparserobust.errors import AttackError
from sparserobust.settings import check_value
from sparserobust.utils import eval_mode, model_device

log = logging.getLogger(__name__)


SAFETY_MARGIN = 1e-4
"""Logit gap an attack demands before it keeps an adversarial, so that the final
verification (a forward pass on a differently composed batch, whose float rounding
differs) does not flip points that sit exactly on the decision boundary."""


def clearly_adversarial(
    logits: torch.Tensor, labels: torch.Tensor, targeted: bool, margin: float = SAFETY_MARGIN
) -> torch.Tensor:
    """Bool ``(N,)``: adversarial with a logit gap above ``margin`` (untargeted: the
    best other class beats the label by ``margin``; targeted: the target beats every
    other class by ``margin``)."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], -torch.inf).amax(1)
    return other - own > margin if not targeted else own - other > margin


def check_epsilons(epsilons: Sequence[float] | float | None) -> tuple[float, ...]:
    """Validated epsilons (positive, finite), sorted ascending without duplicates."""
    if epsilons is None:
        raise AttackError("a fixed-epsilon attack needs epsilons, e.g. epsilons=[0.1, 0.2]")
    if isinstance(epsilons, int | float) or (
        isinstance(epsilons, torch.Tensor) and epsilons.ndim == 0
    ):
        epsilons = [float(epsilons)]
    try:
        values = [float(e) for e in epsilons]
    except (TypeError, ValueError):
        raise AttackError(f"epsilons must be numbers, got {epsilons!r}") from None
    if not values:
        raise AttackError("epsilons is empty: pass at least one epsilon > 0")
    bad = [e for e in values if not math.isfinite(e) or e <= 0]
    if bad:
        raise AttackError(f"epsilons must be finite and > 0, got {bad[0]}")
    return tuple(sorted(set(values)))


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (the only randomness an attack uses)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def loss_and_grad(
    model: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward ``x``, per-sample loss ``loss_fn(logits)`` ``(N,)``, its gradient w.r.t. ``x``.

    Only the input gradient is computed (no parameter gradients). Returns
    detached ``(logits, loss, grad)``.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


def ce_loss(labels: torch.Tensor, targeted: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample loss to *increase*: cross-entropy to ``labels`` (untargeted)
    or its negative (targeted, ``labels`` are the targets)."""
    sign = -1.0 if targeted else 1.0
    return lambda logits: sign * F.cross_entropy(logits, labels, reduction="none")


@torch.no_grad()
def shrink_along_ray(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    targeted: bool,
    steps: int = 10,
) -> torch.Tensor:
    """Bisect ``alpha`` in [0, 1] per sample for the smallest ``x + alpha (x_adv - x)``
    that stays adversarial (``steps`` forward passes). Rows of ``x_adv`` that are
    not adversarial are returned unchanged. The result stays in [0,1] (convexity)."""
    r = x_adv - x
    ok = clearly_adversarial(model(x_adv), labels, targeted)
    lo = torch.zeros(x.shape[0], device=x.device)
    hi = torch.ones(x.shape[0], device=x.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        adv = clearly_adversarial(model(x + expand_like(mid, r) * r), labels, targeted)
        hi = torch.where(adv, mid, hi)
        lo = torch.where(adv, lo, mid)
    alpha = torch.where(ok, hi, torch.ones_like(hi))
    return (x + expand_like(alpha, r) * r).clamp(0.0, 1.0)


class Attack(ABC):
    """Common driver: checks inputs, eval mode, seeding, chunking and re-verification.

    Subclass :class:`FixedEpsilonAttack` or :class:`MinimizationAttack`, not this.
    """

    name: str = "attack"
    norm: float = 2.0
    fixed_epsilon: bool = False

    def __init__(self, batch_size: int = 1000) -> None:
        if batch_size < 1:
            raise AttackError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def params(self) -> dict[str, object]:
        """The attack's hyperparameters as a JSON-able dict."""
        out: dict[str, object] = {}
        for k, v in vars(self).items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = str(v)  # JSON has no inf
            elif isinstance(v, int | float | str | bool | None):
                out[k] = v
        return out

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilons: Sequence[float] | float | None = None,
        target: torch.Tensor | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> AttackResult:
        """Attack ``model`` on inputs ``x`` ``(N, ...)`` in [0,1] with true labels ``y`` ``(N,)``.

        ``target`` ``(N,)`` makes the attack targeted. ``epsilons`` (l_p radii in
        [0,1] pixel space) is required by fixed-epsilon attacks and ignored by
        minimisation attacks (threshold their distances with
        :func:`sparserobust.metrics.robust_accuracy`). ``seed`` fixes all
        randomness: the same seed on the same device gives identical output.
        ``num_classes``, when given, must equal the model's number of logits.
        The model is in eval mode during the attack and its mode is restored.
        """
        check_inputs(x, y, target)
        eps = check_epsilons(epsilons) if self.fixed_epsilon else None
        check_value("epsilons", eps, "epsilons", norm=self.norm)
        check_value("seed", seed, "seed")
        device = model_device(model)
        out_device = x.device
        xd = x.detach().to(device, torch.float32)
        yd = y.to(device, torch.long)
        td = None if target is None else target.to(device, torch.long)
        labels = yd if td is None else td
        targeted = td is not None
        gen = make_generator(device, seed)
        start = time.perf_counter()
        with eval_mode(model):
            logits = batched_logits(model, xd, self.batch_size)
            check_logits(logits, xd.shape[0], [yd, td], num_classes)
            clean_correct = logits.argmax(1) == yd
            done0 = is_adversarial(logits, labels, targeted)
            x_adv = self._attack_all(model, xd, labels, targeted, done0, gen, eps)
            success, distances = self._verify(model, xd, x_adv, labels, targeted, eps)
        x_adv = keep_successes(xd, x_adv, success)
        seconds = time.perf_counter() - start
        log.info("%s: %d samples in %.2fs", self.name, xd.shape[0], seconds)
        return AttackResult(
            attack=self.name,
            norm=self.norm,
            x=x.detach(),
            y=y.to(out_device),
            clean_correct=clean_correct.to(out_device),
            x_adv=x_adv.to(out_device),
            success=success.to(out_device),
            distances=distances.to(out_device),
            epsilons=eps,
            target=None if target is None else target.to(out_device),
            seconds=seconds,
            params=self.params(),
        )

    @abstractmethod
    def _attack_all(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        done: torch.Tensor,
        gen: torch.Generator,
        epsilons: tuple[float, ...] | None,
    ) -> torch.Tensor:
        """Adversarial inputs for every sample not ``done``: ``(N, ...)`` for a
        minimisation attack, ``(E, N, ...)`` for a fixed-epsilon attack."""

    @torch.no_grad()
    def _verify(
        self,
        model: nn.Module,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        epsilons: tuple[float, ...] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x_adv.reshape(-1, *x.shape[1:])
        xs = x.repeat(len(epsilons or [0]), *[1] * (x.ndim - 1))
        labs = labels.repeat(len(epsilons or [0]))
        in_box = (rows >= 0).flatten(1).all(1) & (rows <= 1).flatten(1).all(1)
        ok = is_adversarial(batched_logits(model, rows, self.batch_size), labs, targeted) & in_box
        dist = lp_norms(rows - xs, self.norm)
        if epsilons is not None:
            eps = torch.tensor(epsilons, device=x.device).repeat_interleave(x.shape[0])
            ok &= dist <= eps * (1 + NORM_TOL) + 1e-7
        dist = torch.where(ok, dist, torch.full_like(dist, INF))
        if epsilons is None:
            return ok, dist
        return ok.view(len(epsilons), -1), dist.view(len(epsilons), -1)


class MinimizationAttack(Attack):
    """An attack that searches the smallest perturbation per sample (DeepFool, C&W,
    DDN, min-l2): :meth:`Attack.run` reports each success's norm."""

    fixed_epsilon = False

    def _attack_all(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        done: torch.Tensor,
        gen: torch.Generator,
        epsilons: tuple[float, ...] | None,
    ) -> torch.Tensor:
        x_adv = x.clone()
        todo = (~done).nonzero().flatten()
        for i in range(0, todo.numel(), self.batch_size):
            idx = todo[i : i + self.batch_size]
            x_adv[idx] = self.attack_batch(model, x[idx], labels[idx], targeted, gen).detach()
        return x_adv

    @abstractmethod
    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """The smallest adversarial found ``(B, ...)`` in [0,1] for a batch that is not
        yet adversarial (any input where it failed). ``labels`` are the true labels
        (untargeted) or the targets."""


class FixedEpsilonAttack(Attack):
    """An attack with a perturbation budget (FGSM, PGD, Square): :meth:`Attack.run`
    takes a list of epsilons and reports per-sample success for each."""

    fixed_epsilon = True

    def _attack_all(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        done: torch.Tensor,
        gen: torch.Generator,
        epsilons: tuple[float, ...] | None,
    ) -> torch.Tensor:
        """Epsilons ascending: a sample broken at a smaller epsilon keeps that
        adversarial for every larger epsilon (it lies in the larger ball too)."""
        if epsilons is None:  # pragma: no cover - run() always checks them
            raise AttackError(f"{self.name} needs epsilons, e.g. epsilons=[0.1, 0.2]")
        out = x.unsqueeze(0).repeat(len(epsilons), *[1] * x.ndim)
        best = x.clone()
        done = done.clone()
        for e, eps in enumerate(epsilons):
            todo = (~done).nonzero().flatten()
            for i in range(0, todo.numel(), self.batch_size):
                idx = todo[i : i + self.batch_size]
                adv = self.attack_batch(model, x[idx], labels[idx], targeted, gen, eps).detach()
                adv = project(x[idx], adv, self.norm, eps)
                with torch.no_grad():  # only clear wins are carried to larger epsilons
                    ok = clearly_adversarial(model(adv), labels[idx], targeted)
                best[idx[ok]] = adv[ok]
                done[idx[ok]] = True
                out[e, idx] = adv
            out[e, done] = best[done]
        return out

    @abstractmethod
    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        """Adversarial inputs ``(B, ...)`` within l_p distance ``epsilon`` of ``x``
        (projected again by the driver) for a batch that is not yet adversarial."""
