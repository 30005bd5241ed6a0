"""The per-sample result record of an attack, and its verification: input and logit
checks, and :func:`result_from_adversarials`, which builds a verified record from
adversarial inputs produced elsewhere.

Every success in an :class:`AttackResult` has been re-verified by a forward pass of
the model on the returned adversarial input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sparserobust.attacks.norms import INF, expand_like, lp_norms
from sparserobust.errors import AttackError
from sparserobust.utils import eval_mode, forward, model_device


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Bool ``(N,)``: the prediction is the target (targeted) or differs from the label."""
    pred = logits.argmax(1)
    return pred == labels if targeted else pred != labels


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


def keep_successes(x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """``x_adv`` (``(N, ...)`` or ``(E, N, ...)``) with failed rows reset to the clean input."""
    rows = x_adv.reshape(-1, *x.shape[1:])
    xs = x.repeat(rows.shape[0] // x.shape[0], *[1] * (x.ndim - 1))
    ok = success.reshape(-1)
    return torch.where(expand_like(ok, rows), rows, xs).reshape(x_adv.shape)


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
