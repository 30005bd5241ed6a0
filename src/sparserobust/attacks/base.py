"""Attack API: the per-sample result record, input checks and the two attack families.

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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.errors import AttackError
from sparserobust.settings import check_value
from sparserobust.utils import eval_mode, forward, model_device

log = logging.getLogger(__name__)

INF = math.inf
_NORM_TOL = 1e-5
"""Relative slack allowed when checking that a fixed-epsilon perturbation lies in its ball."""


def lp_norms(r: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample l_p norm of ``r`` (shape ``(N, ...)``, flattened per sample) -> shape ``(N,)``."""
    flat = r.flatten(1)
    if p == INF:
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if p == 2:
        return flat.norm(p=2, dim=1)
    if p == 1:
        return flat.abs().sum(1)
    raise AttackError(f"unsupported norm {p!r}: use 1, 2 or inf")


def parse_norm(norm: float | str) -> float:
    """``"inf"``, ``"linf"``, ``inf`` -> ``math.inf``; ``"2"``, ``"l2"``, ``2`` -> 2.0."""
    text = str(norm).strip().lower().removeprefix("l")
    if text in {"inf", "infinity"}:
        return INF
    if text in {"2", "2.0"}:
        return 2.0
    raise AttackError(f"unsupported norm {norm!r}: use 2 or inf")


def norm_name(p: float) -> str:
    """``2.0`` -> ``"l2"``, ``inf`` -> ``"linf"``."""
    return "linf" if p == INF else f"l{p:g}"


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample vector ``(N,)`` as ``(N, 1, 1, ...)`` to broadcast against ``x``."""
    return v.view(-1, *([1] * (x.ndim - 1)))


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Bool ``(N,)``: the prediction is the target (targeted) or differs from the label."""
    pred = logits.argmax(1)
    return pred == labels if targeted else pred != labels


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


@dataclass
class AttackResult:
    """Per-sample outcome of one attack run (all tensors on the input's device).

    Shapes use ``N`` samples and ``E`` epsilons.

    * ``x``: the clean inputs ``(N, ...)`` in [0,1];
      ``y``: the true labels ``(N,)``; ``target``: target classes ``(N,)`` or None.
    * ``clean_correct``: bool ``(N,)``, the model classifies ``x`` correctly.
    * ``x_adv``: adversarial inputs in [0,1]; ``(N, ...)`` for a minimisation
      attack, ``(E, N, ...)`` for a fixed-epsilon attack. Where the attack
      failed, ``x_adv`` is the clean input.
    * ``success``: bool ``(N,)`` or ``(E, N)``: re-verified by a forward pass.
      Untargeted: ``model(x_adv)`` differs from ``y`` (points already
      misclassified count as successes at distance 0); targeted: it equals
      ``target``.
    * ``distances``: float ``(N,)`` or ``(E, N)``: ``||x_adv - x||_p`` in [0,1]
      pixel space for the attack's norm ``p``; ``inf`` where the attack failed.
    * ``epsilons``: the epsilon list (ascending) for fixed-epsilon attacks, else None.
    * ``seconds``: wall-clock time of the run.
    * ``details``: attack-specific per-sample extras, JSON-able (e.g. AutoAttack's
      ``broken_by``: which sub-attack broke each point); empty for most attacks.
    """

    attack: str
    norm: float
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor
    x_adv: torch.Tensor
    success: torch.Tensor
    distances: torch.Tensor
    epsilons: tuple[float, ...] | None = None
    target: torch.Tensor | None = None
    seconds: float = 0.0
    params: dict[str, object] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)

    @property
    def targeted(self) -> bool:
        """True for a targeted run."""
        return self.target is not None

    @property
    def is_fixed_epsilon(self) -> bool:
        """True when the result holds one row per epsilon."""
        return self.epsilons is not None

    def __len__(self) -> int:
        return int(self.y.shape[0])


def check_inputs(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> None:
    """Raise :class:`AttackError` unless ``x`` is a finite float batch in [0,1]
    with at least 2 dims and ``y`` (and ``target``) are integer vectors of length N."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise AttackError("attack inputs must be torch tensors: pass x (N,...) and labels y (N,)")
    if x.ndim < 2:
        raise AttackError(
            f"inputs must have shape (N, ...) with N samples, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise AttackError(
            f"inputs must be floating point in [0,1], got dtype {x.dtype}: divide by 255"
        )
    if x.shape[0] == 0:
        raise AttackError("no inputs to attack: pass at least one sample")
    if not bool(torch.isfinite(x).all()):
        raise AttackError("inputs contain NaN or inf: clean the data before attacking")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise AttackError(
            f"inputs must lie in [0,1] (got [{lo:.3g}, {hi:.3g}]): "
            "keep normalisation inside the model"
        )
    for name, labels in (("labels", y), ("targets", target)):
        if labels is None:
            continue
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise AttackError(
                f"{name} must have shape ({x.shape[0]},) to match the inputs, "
                f"got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise AttackError(f"{name} must be integer class indices, got dtype {labels.dtype}")
        if labels.numel() and int(labels.min()) < 0:
            raise AttackError(f"{name} must be class indices >= 0, got {int(labels.min())}")
    if target is not None and bool((target.cpu() == y.cpu()).any()):
        raise AttackError("every target class must differ from the true label: drop those samples")


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


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``model`` on ``x`` computed in chunks of ``batch_size``."""
    return torch.cat(
        [forward(model, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    )


def check_logits(
    logits: torch.Tensor,
    n: int,
    labels: Sequence[torch.Tensor | None],
    num_classes: int | None = None,
) -> int:
    """Raise :class:`AttackError` unless ``logits`` is ``(n, K)``, finite, with every
    label below K (and K equal to ``num_classes`` when given); return K."""
    if logits.ndim != 2 or logits.shape[0] != n:
        raise AttackError(
            f"model must return logits of shape (N, num_classes) = ({n}, K), "
            f"got {tuple(logits.shape)}"
        )
    k = int(logits.shape[1])
    if k < 2:
        raise AttackError(f"model returns {k} class score(s): a classifier needs at least 2")
    if num_classes is not None and k != num_classes:
        raise AttackError(
            f"model returns {k} class scores but the data has {num_classes} classes: "
            "check the checkpoint matches the dataset"
        )
    for lab in labels:
        if lab is not None and lab.numel() and int(lab.max()) >= k:
            raise AttackError(
                f"label/target {int(lab.max())} is out of range for a model with {k} classes: "
                "check the dataset matches the model"
            )
    if not bool(torch.isfinite(logits).all()):
        raise AttackError("model returned NaN or inf logits on clean inputs: check the checkpoint")
    return k


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
        x_adv = _keep_successes(xd, x_adv, success)
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
            ok &= dist <= eps * (1 + _NORM_TOL) + 1e-7
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


def _keep_successes(x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """``x_adv`` (``(N, ...)`` or ``(E, N, ...)``) with failed rows reset to the clean input."""
    rows = x_adv.reshape(-1, *x.shape[1:])
    xs = x.repeat(rows.shape[0] // x.shape[0], *[1] * (x.ndim - 1))
    ok = success.reshape(-1)
    return torch.where(expand_like(ok, rows), rows, xs).reshape(x_adv.shape)


def project(x: torch.Tensor, x_adv: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the l_p ball of radius ``eps`` around ``x`` and the [0,1] box."""
    r = x_adv - x
    if p == INF:
        r = r.clamp(-eps, eps)
    else:
        n = lp_norms(r, p).clamp_min(1e-12)
        r = r * expand_like(torch.clamp(eps / n, max=1.0), r)
    return (x + r).clamp(0.0, 1.0)


def result_from_adversarials(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    norm: float,
    attack: str,
    seconds: float = 0.0,
    target: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> AttackResult:
    """Build a verified minimisation :class:`AttackResult` from adversarial inputs
    produced elsewhere (a peer library, a stored run): success and distances are
    recomputed here by a forward pass; already misclassified points count as
    successes at distance 0."""
    check_inputs(x, y, target)
    if x_adv.shape != x.shape:
        raise AttackError(
            f"x_adv must have the inputs' shape {tuple(x.shape)}, got {tuple(x_adv.shape)}"
        )
    device = model_device(model)
    xd, xa = x.to(device, torch.float32), x_adv.detach().to(device, torch.float32)
    yd = y.to(device, torch.long)
    td = None if target is None else target.to(device, torch.long)
    labels = yd if td is None else td
    with eval_mode(model), torch.no_grad():
        logits = batched_logits(model, xd, batch_size)
        k = check_logits(logits, xd.shape[0], [yd, td])
        del k
        done0 = is_adversarial(logits, labels, td is not None)
        xa = torch.where(expand_like(done0, xa), xd, xa)
        xa = torch.nan_to_num(xa, nan=-1.0)
        in_box = (xa >= 0).flatten(1).all(1) & (xa <= 1).flatten(1).all(1)
        ok = is_adversarial(batched_logits(model, xa, batch_size), labels, td is not None) & in_box
    dist = torch.where(ok, lp_norms(xa - xd, norm), torch.full((xd.shape[0],), INF, device=device))
    xa = torch.where(expand_like(ok, xa), xa, xd)
    dev = x.device
    return AttackResult(
        attack=attack,
        norm=norm,
        x=x.detach(),
        y=y.to(dev),
        clean_correct=(logits.argmax(1) == yd).to(dev),
        x_adv=xa.to(dev),
        success=ok.to(dev),
        distances=dist.to(dev),
        target=target,
        seconds=seconds,
    )
