"""Verification methods by name, weakest first: the one table a caller chooses from.

Each method decides every point of a batch at one radius and returns one
:class:`PointVerdict` per point, with one of :data:`POINT_STATUSES`:

- ``verified``: no perturbation in the threat set (the l_p ball of radius ``epsilon``
  intersected with the [0,1] box, [0,1] pixel space) changes the class;
- ``counterexample``: a point of the threat set that our own forward pass classifies
  as another class (a misclassified clean point is one at distance 0);
- ``timeout``: a complete method ran out of its per-point time limit (never verified);
- ``error``: a complete method's solver failed (see ``detail``);
- ``not_certified``: an incomplete method (bounds only) could not prove the point;
  it may still be robust.

Complete methods answer verified / counterexample / timeout / error; incomplete ones
verified / not_certified, and counterexample only for misclassified clean points.
:data:`VERIFIERS` maps each name to its :class:`Verifier`; adding a method (alpha-CROWN,
branch and bound) is one entry there, placed by strength: the default of a norm is the
strongest method that handles it (:func:`strongest`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.utils import model_device
from sparserobust.verify.alpha import alpha_certify
from sparserobust.verify.bab import BabSettings, verify_bab
from sparserobust.verify.certification import CertifyResult, certify
from sparserobust.verify.exact import (
    CEX_TOL,
    LP_FRACTION,
    ExactResult,
    bounds_from,
    check_counterexample,
    verify_many,
)
from sparserobust.verify.network import parse_network

__all__ = [
    "POINT_STATUSES",
    "VERIFIERS",
    "PointVerdict",
    "Verifier",
    "decide_exact",
    "decide_points",
    "get_verifier",
    "strongest",
    "verifier_names",
]

POINT_STATUSES = ("verified", "counterexample", "timeout", "error", "not_certified")

Progress = Callable[[int], None]
"""Called with the number of points just decided (a progress bar's ``update``)."""


@dataclass(frozen=True)
class PointVerdict:
    """One point's answer at one radius.

    ``index``: the point's position in the batch; ``label``: its true class;
    ``status``: one of :data:`POINT_STATUSES`; ``by``: what decided it (``clean``:
    misclassified unperturbed, ``attack``: a PGD adversarial re-checked by our forward
    pass, ``ibp``/``crown``: bounds alone, ``milp``: the solver); ``seconds``: wall time
    spent on the point (its share of a batched pass included); ``margin_lower``: a proven
    lower bound of ``min_j f_y - f_j`` over the threat set in logits (> 0 when verified;
    None when unknown); ``margin_upper``: the smallest margin found (< 0 for a solver's
    counterexample), or None; ``detail``: why, for errors and timeouts."""

    index: int
    label: int
    status: str
    by: str
    seconds: float
    margin_lower: float | None = None
    margin_upper: float | None = None
    detail: str = ""

    @classmethod
    def of_exact(cls, r: ExactResult, label: int) -> PointVerdict:
        """The verdict of an exact (MILP) result ``r`` of a point labelled ``label``."""
        return cls(r.index, label, r.status, r.by, r.seconds, r.margin_lower, r.margin_upper,
                   r.detail)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able record."""
        return {
            "index": self.index,
            "label": self.label,
            "status": self.status,
            "by": self.by,
            "seconds": round(self.seconds, 4),
            "margin_lower": self.margin_lower,
            "margin_upper": self.margin_upper,
            "detail": self.detail,
        }


class Decide(Protocol):
    """A method's decision function: every point of ``x`` ``(N, C, H, W)`` in [0,1]
    with labels ``y`` ``(N,)`` at radius ``epsilon`` under ``norm`` (``inf`` or ``2``)."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilon: float,
        norm: str,
        time_limit: float,
        seed: int,
        batch_size: int,
        progress: Progress,
    ) -> list[PointVerdict]: ...


@dataclass(frozen=True)
class Verifier:
    """A method: its ``name``, whether it is ``complete`` (decides every point given
    time), the ``norms`` it handles, its ``decide`` function and a one-line
    ``description``."""

    name: str
    complete: bool
    norms: tuple[str, ...]
    decide: Decide
    description: str


def _bound_method(method: str) -> Decide:
    """IBP, CROWN or alpha-CROWN as a method: certified points are verified,
    misclassified ones counterexamples, the rest not certified; each point's seconds
    are its share of the batched pass."""

    def decide(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, norm: str,
        time_limit: float, seed: int, batch_size: int, progress: Progress,
    ) -> list[PointVerdict]:  # fmt: skip
        if method == "alpha":
            res = alpha_certify(model, x, y, epsilon=epsilon, norm=norm)
        else:
            res = certify(model, x, y, epsilon=epsilon, norm=norm, method=method,
                          batch_size=batch_size)  # fmt: skip
        n = int(res.certified.numel())
        share = res.seconds / max(n, 1)
        out = []
        for i in range(n):
            lower = float(res.margins[i].min())
            if not bool(res.clean_correct[i]):
                status, by = "counterexample", "clean"
            else:
                status, by = ("verified" if bool(res.certified[i]) else "not_certified"), method
            out.append(PointVerdict(i, int(y[i]), status, by, share, lower))
        progress(n)
        return out

    return decide


def decide_exact(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    crown: CertifyResult,
    *,
    time_limit: float,
    seed: int = 0,
    tighten: bool = False,
    on_point: Callable[[ExactResult], None] | None = None,
    search: str = "milp",
) -> tuple[list[ExactResult], Any]:
    """Exact l_inf verdicts of ``x`` ``(N, C, H, W)`` (on the model's device) with
    labels ``y``: a PGD adversarial (seeded by ``seed``) re-checked by our forward pass is
    a counterexample, the rest go to :func:`~sparserobust.verify.exact.verify_many`
    (CROWN-certified points need no MILP; ``time_limit`` seconds per MILP point), or with
    ``search="bab"`` to branch and bound (:func:`~sparserobust.verify.bab.verify_bab`:
    CROWN, alpha-CROWN, then splits; ``time_limit`` seconds per point).
    ``crown``: a CROWN :func:`certify` result of the same points that kept their bounds
    (``keep_bounds >= N``). ``on_point`` sees each verdict as it is known. Returns the
    verdicts in point order and the PGD attack result."""
    from sparserobust.attacks import get_attack

    n = x.shape[0]
    start = time.perf_counter()
    pgd = get_attack("pgd", "inf").run(model, x, y, epsilons=[epsilon], seed=seed)
    attack_seconds = (time.perf_counter() - start) / max(n, 1)
    decided: dict[int, ExactResult] = {}
    for i in range(n):
        t0 = time.perf_counter()
        if bool(pgd.success[0, i]):
            checked = check_counterexample(model, x[i], pgd.x_adv[0, i], int(y[i]), epsilon)
            if checked is not None:
                by = "clean" if not bool(pgd.clean_correct[i]) else "attack"
                point_s = attack_seconds + time.perf_counter() - t0
                decided[i] = ExactResult(i, epsilon, "counterexample", by, point_s,
                                         counterexample=checked.cpu())  # fmt: skip
                if on_point is not None:
                    on_point(decided[i])
    rest = [i for i in range(n) if i not in decided]
    if rest:
        # the MILPs reuse the CROWN bounds of the certify pass
        layers = parse_network(model, x.shape[1:], device=x.device)

        def seen(r: ExactResult) -> None:
            r.seconds += attack_seconds
            if on_point is not None:
                on_point(r)

        if search == "bab":
            # the PGD pre-check above already ran: the search needs no attack of its own
            exact = verify_bab(model, x[rest], y[rest], epsilon=epsilon, time_limit=time_limit,
                               settings=BabSettings.for_device(x.device, pgd_steps=0),
                               indices=rest)  # fmt: skip
            for r in exact:
                seen(r)
        elif search == "milp":
            exact = verify_many(model, layers, x[rest], y[rest], epsilon,
                                bounds_from(crown, rest), rest, on_point=seen,
                                time_limit=time_limit, tighten=tighten, lp_fraction=LP_FRACTION,
                                cex_tol=CEX_TOL)  # fmt: skip
        else:
            raise ConfigError(f"unknown exact search {search!r}: use milp or bab")
        decided.update((r.index, r) for r in exact)
    return [decided[i] for i in range(n)], pgd


def _decide_milp(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, norm: str,
    time_limit: float, seed: int, batch_size: int, progress: Progress,
) -> list[PointVerdict]:  # fmt: skip
    """CROWN on every point, a PGD pre-check, then one MILP per undecided point."""
    crown = certify(model, x, y, epsilon=epsilon, norm="inf", method="crown",
                    batch_size=batch_size, keep_bounds=x.shape[0])  # fmt: skip
    results, _ = decide_exact(model, x, y, epsilon, crown, time_limit=time_limit, seed=seed,
                              on_point=lambda _: progress(1))  # fmt: skip
    return [PointVerdict.of_exact(r, int(y[r.index])) for r in results]


def _decide_bab(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, norm: str,
    time_limit: float, seed: int, batch_size: int, progress: Progress,
) -> list[PointVerdict]:  # fmt: skip
    """Branch and bound (:func:`~sparserobust.verify.bab.verify_bab`: its PGD pre-check
    on all points at once, then point by point), with the search sized for the model's
    device (:meth:`BabSettings.for_device`)."""
    settings = BabSettings.for_device(model_device(model))
    results = verify_bab(model, x, y, epsilon=epsilon, time_limit=time_limit,
                         settings=settings, on_point=lambda _: progress(1))  # fmt: skip
    return [PointVerdict.of_exact(r, int(y[r.index])) for r in results]


VERIFIERS: dict[str, Verifier] = {
    v.name: v
    for v in (
        Verifier("ibp", False, ("inf", "2"), _bound_method("ibp"), "interval bounds (sound)"),
        Verifier("crown", False, ("inf", "2"), _bound_method("crown"), "CROWN bounds (sound)"),
        Verifier("alpha", False, ("inf", "2"), _bound_method("alpha"), "alpha-CROWN (sound)"),
        Verifier("milp", True, ("inf",), _decide_milp, "CROWN, PGD, then a MILP (complete)"),
        Verifier("bab", True, ("inf",), _decide_bab, "branch and bound (complete)"),
    )
}
"""Every method by name, weakest first (the last one handling a norm is its default)."""


def verifier_names() -> list[str]:
    """Method names, weakest first."""
    return list(VERIFIERS)


def strongest(norm: str) -> str:
    """The strongest method that handles ``norm`` (``inf`` or ``2``)."""
    return [name for name, v in VERIFIERS.items() if norm in v.norms][-1]


def get_verifier(name: str | None, norm: str) -> Verifier:
    """The method ``name`` (None: :func:`strongest` for ``norm``); ConfigError for an
    unknown name or a norm it does not handle."""
    if norm not in ("inf", "2"):
        raise ConfigError(f"unknown norm {norm!r}: use inf or 2")
    key = strongest(norm) if name is None else str(name).strip().lower()
    if key not in VERIFIERS:
        raise ConfigError(f"unknown verification method {name!r}: use {', '.join(VERIFIERS)}")
    verifier = VERIFIERS[key]
    if norm not in verifier.norms:
        others = [n for n, v in VERIFIERS.items() if norm in v.norms]
        raise ConfigError(
            f"{key} handles the l_{'/l_'.join(verifier.norms)} norm only, not l_{norm}: "
            f"use --method {' or '.join(others)}"
        )
    return verifier


def decide_points(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    method: str | None = None,
    norm: str = "inf",
    time_limit: float = 30.0,
    seed: int = 0,
    batch_size: int = 250,
    progress: Progress | None = None,
) -> list[PointVerdict]:
    """Decide every point of ``x`` ``(N, C, H, W)`` in [0,1] with labels ``y`` ``(N,)`` at
    radius ``epsilon`` ([0,1] pixel space, ``norm`` ``inf`` or ``2``) with ``method``
    (None: the strongest for the norm). ``time_limit``: seconds per point of a complete
    method; ``seed``: its attack pre-check. Returns one verdict per point, in order."""
    verifier = get_verifier(method, norm)
    return verifier.decide(
        model, x, y, epsilon=float(epsilon), norm=norm, time_limit=float(time_limit),
        seed=int(seed), batch_size=int(batch_size), progress=progress or (lambda _: None),
    )  # fmt: skip
