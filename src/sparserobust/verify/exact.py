"""Exact l_inf verification per point: bounds, then one MILP per class.

Threat set: the l_inf ball of radius ``eps`` around ``x`` intersected with the
[0,1] box, in [0,1] pixel space. Per point and epsilon the answer is one of

- ``verified``: for every class ``j != y`` the solver's dual bound proves
  ``min (f_y - f_j) > 0`` over the threat set;
- ``counterexample``: a point of the threat set that our own forward pass
  (the model itself, float32) classifies as another class; solver points that fail
  this check are never reported as counterexamples;
- ``timeout``: the time limit (per point, all classes together) ran out;
- ``error``: the solver failed or its answer could not be confirmed (see ``detail``).

Solver tolerances (HiGHS feasibility 1e-6) make "exact" mean exact up to
margins of about 1e-6 logits. The encoding is :mod:`sparserobust.verify.milp`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sparserobust.errors import ConfigError, NormError
from sparserobust.metrics.margin import check_metric_inputs
from sparserobust.norms import parse_norm
from sparserobust.utils import eval_mode, model_device
from sparserobust.verify.certification import CertifyResult, certify, check_labels
from sparserobust.verify.milp import BuiltMilp, build_milp, input_from, run_checked
from sparserobust.verify.network import Layer, parse_network
from sparserobust.verify.stages import Stage, network_stages

log = logging.getLogger(__name__)

__all__ = [
    "CEX_TOL",
    "LP_FRACTION",
    "STATUSES",
    "check_points",
    "ExactResult",
    "PointBounds",
    "bounds_from",
    "check_counterexample",
    "is_misclassified",
    "verify_exact",
    "verify_many",
]

STATUSES = ("verified", "counterexample", "timeout", "error")
_NORM_TOL = 1e-6  # relative slack of the in-ball check (float32 pixels)
_BOUND_BATCH = 32  # points per batched CROWN pass before the MILPs
LP_FRACTION = 0.25  # share of a point's time limit LP tightening may use
CEX_TOL = 1e-4  # the solver stops at a point whose margin is below -CEX_TOL


@dataclass
class ExactResult:
    """The exact verdict for one point at one l_inf radius.

    - ``status``: one of :data:`STATUSES`; ``by``: what decided it (``milp``,
      ``crown``: certified by bounds alone, ``attack``: a PGD adversarial,
      ``clean``: misclassified without perturbation).
    - ``epsilon``: l_inf radius in [0,1] pixel space; ``seconds``: wall time spent
      on this point (bounds, LP tightening, every class's MILP).
    - ``margin_lower``: a proven lower bound of ``min_j f_y - f_j`` over the threat
      set (logits; > 0 when verified; <= 0 on a timeout: how far from a proof), or
      None; ``margin_upper``: the smallest margin the solver found (< 0 for a
      counterexample), or None.
    - ``counterexample``: the checked adversarial input ``(C, H, W)`` or None.
    - ``unstable``: unstable ReLUs under ``ibp``, ``crown`` and ``lp`` bounds (the
      last equals crown when LP tightening is off or not reached).
    - ``binaries``: binary variables in the MILP; ``detail``: why, for errors.
    """

    index: int
    epsilon: float
    status: str
    by: str
    seconds: float
    margin_lower: float | None = None
    margin_upper: float | None = None
    counterexample: torch.Tensor | None = None
    unstable: dict[str, int] = field(default_factory=dict)
    binaries: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (no tensors)."""
        return {
            "index": self.index,
            "epsilon": self.epsilon,
            "status": self.status,
            "by": self.by,
            "seconds": round(self.seconds, 4),
            "margin_lower": self.margin_lower,
            "margin_upper": self.margin_upper,
            "unstable": dict(self.unstable),
            "binaries": self.binaries,
            "detail": self.detail,
        }


def is_misclassified(model: nn.Module, x_adv: torch.Tensor, y: int) -> bool:
    """Our forward pass: some other class's logit strictly beats class ``y``."""
    with torch.no_grad():
        logits = model(x_adv.unsqueeze(0))[0]
    own = logits[y]
    other = torch.cat([logits[:y], logits[y + 1 :]]).max()
    return bool(other > own)


def check_counterexample(
    model: nn.Module, x0: torch.Tensor, cand: torch.Tensor, y: int, eps: float
) -> torch.Tensor | None:
    """``cand`` (clipped into ball and box, in ``x0``'s dtype) if our forward pass
    confirms it is adversarial, in [0,1] and within ``eps`` in l_inf; else None."""
    lo = (x0.double() - eps).clamp(0, 1)
    hi = (x0.double() + eps).clamp(0, 1)
    x = torch.minimum(torch.maximum(cand.double(), lo), hi).to(x0.dtype).clamp(0, 1)
    dist = float((x.double() - x0.double()).abs().max())
    if dist > eps * (1 + _NORM_TOL) + 1e-7:
        return None
    return x if is_misclassified(model, x, y) else None


class _Solve:
    """One class's MILP run with early stops: at a clear counterexample, at a proof,
    or at the point's wall-clock ``deadline`` (HiGHS's own time limit can overrun)."""

    def __init__(self, built: BuiltMilp, const: float, cex_tol: float, deadline: float) -> None:
        self.const, self.cex_tol, self.deadline = const, cex_tol, deadline
        self.best_obj = math.inf
        self.best_sol: np.ndarray | None = None
        self.dual = -math.inf
        h = built.model.h
        h.cbMipImprovingSolution.subscribe(self._improving)
        h.cbMipInterrupt.subscribe(self._interrupt)
        h.cbSimplexInterrupt.subscribe(self._late)

    # HiGHS keeps the interrupt flag between runs: set it explicitly on every call.
    def _improving(self, e: Any) -> None:
        obj = float(e.data_out.objective_function_value) + self.const
        if obj < self.best_obj:
            self.best_obj = obj
            self.best_sol = np.array(e.data_out.mip_solution, dtype=float)
        e.interrupt(bool(obj < -self.cex_tol))

    def _interrupt(self, e: Any) -> None:
        dual = float(e.data_out.mip_dual_bound)
        # +inf is HiGHS calling the problem infeasible, which it never is (x0 is
        # feasible): not a proof, and not a reason to stop (run_checked retries)
        if math.isfinite(dual):
            self.dual = max(self.dual, dual + self.const)
        late = time.perf_counter() > self.deadline
        e.interrupt(bool(self.dual > 0 or self.best_obj < -self.cex_tol or late))

    def _late(self, e: Any) -> None:
        e.interrupt(bool(time.perf_counter() > self.deadline))

    @staticmethod
    def clear(h: Any) -> None:
        """Unsubscribe every callback of a run."""
        h.cbMipImprovingSolution.clear()
        h.cbMipInterrupt.clear()
        h.cbSimplexInterrupt.clear()


@dataclass
class PointBounds:
    """CROWN bounds of one point (from a batched pass) and its unstable ReLU counts."""

    pre: dict[int, tuple[np.ndarray, np.ndarray]]
    margins: np.ndarray
    unstable: dict[str, int]
    seconds: float  # this point's share of the batched bound computation


def bounds_from(crown: CertifyResult, indices: Sequence[int]) -> list[PointBounds]:
    """The bounds that ``certify(keep_bounds=...)`` kept, for the points ``indices``."""
    assert crown.pre is not None
    share = crown.seconds / max(int(crown.certified.numel()), 1)
    relu_crown, relu_ibp = crown.unstable_relus(), crown.unstable_relus(ibp=True)
    pre = {j: (lo.numpy(), hi.numpy()) for j, (lo, hi) in crown.pre.items()}
    return [
        PointBounds(
            {j: (lo[i], hi[i]) for j, (lo, hi) in pre.items()},
            crown.margins[i].double().numpy(),
            {"ibp": int(relu_ibp[i]), "crown": int(relu_crown[i])},
            share,
        )
        for i in indices
    ]


def _point_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float
) -> list[PointBounds]:
    """CROWN bounds of every point, :data:`_BOUND_BATCH` at a time: one batched pass
    instead of one per point (on LeNet-5 the per-point passes took longer than a 3 s
    cap)."""
    crown = certify(model, x, y, epsilon=eps, method="crown", batch_size=_BOUND_BATCH,
                    keep_bounds=x.shape[0])  # fmt: skip
    return bounds_from(crown, range(x.shape[0]))


def _verify_one(
    model: nn.Module,
    x0: torch.Tensor,
    y: int,
    eps: float,
    bounds: PointBounds,
    stages: Callable[[], list[Stage]],
    *,
    time_limit: float,
    tighten: bool,
    lp_fraction: float,
    cex_tol: float,
    index: int,
) -> ExactResult:
    """The MILP verdict for one correctly classified point (``x0``: ``(C, H, W)``).

    ``bounds``: its CROWN bounds; ``stages``: the network as sparse stages (built once
    per model). ``time_limit`` caps building and solving the MILP; the point's seconds
    also count its share of the bounds."""
    begin = time.perf_counter()
    unstable = dict(bounds.unstable)
    margins = bounds.margins
    res = ExactResult(index, eps, "error", "milp", 0.0, unstable=unstable)
    if bool((margins > 0).all()):
        unstable["lp"] = unstable["crown"]
        res.status, res.by, res.margin_lower = "verified", "crown", float(margins.min())
        res.seconds = bounds.seconds + time.perf_counter() - begin
        return res
    try:
        network = stages()  # built once per model, by the first point that needs it: not capped
        start = time.perf_counter()
        deadline = start + time_limit
        lo_in = (x0.double() - eps).clamp(0, 1).flatten().cpu().numpy()
        hi_in = (x0.double() + eps).clamp(0, 1).flatten().cpu().numpy()
        built = build_milp(network, bounds.pre, lo_in, hi_in, tighten=tighten, deadline=deadline,
                       exact_first=True, lp_deadline=start + lp_fraction * time_limit)  # fmt: skip
        unstable["lp"] = built.unstable_lp
        res.binaries = built.binaries
        built.model.make_integer()
        _decide(model, x0, y, eps, built, margins, deadline, cex_tol, res)
    except Exception as exc:  # a solver failure is a status, never a crash
        log.warning("point %d eps %g: exact verification failed: %s", index, eps, exc)
        res.status, res.detail = "error", f"{type(exc).__name__}: {exc}"
    res.seconds = bounds.seconds + time.perf_counter() - begin
    return res


def _decide(
    model: nn.Module, x0: torch.Tensor, y: int, eps: float, built: BuiltMilp,
    crown_margins: np.ndarray, deadline: float, cex_tol: float, res: ExactResult,
) -> None:  # fmt: skip
    """Solve one MILP per class not certified by CROWN, most dangerous first."""
    m = built.model
    hs = m.hp.HighsModelStatus
    order = [j for j in np.argsort(crown_margins) if j != y and crown_margins[j] <= 0]
    lower = float(np.min(crown_margins[np.isfinite(crown_margins)]))
    proven: list[float] = [float(crown_margins[j]) for j in range(len(crown_margins))
                           if j != y and crown_margins[j] > 0]  # fmt: skip
    upper = math.inf
    for pos, j in enumerate(order):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            res.status, res.detail = "timeout", f"time limit before class {j}"
            res.margin_lower = min(proven + [float(crown_margins[k]) for k in order[pos:]])
            break
        row = built.logits[y] - built.logits[j]
        const = float(built.logits0[y] - built.logits0[j])
        m.set_objective(row, True)
        m.h.setOptionValue("mip_rel_gap", 0.0)
        m.h.setOptionValue("mip_abs_gap", 1e-7)
        m.limit(remaining)
        solve = _Solve(built, const, cex_tol, deadline)
        try:
            status = run_checked(m, deadline)
        finally:
            _Solve.clear(m.h)
        info = m.h.getInfo()
        if status == hs.kOptimal:
            obj = float(info.objective_function_value) + const
            # an LP (no binaries left) reports its optimum; a MIP its dual bound
            dual = float(info.mip_dual_bound) + const if built.binaries else obj
            solve.dual = max(solve.dual, dual if math.isfinite(dual) else -math.inf)
            if obj < solve.best_obj:
                solve.best_obj = obj
                solve.best_sol = np.array(m.h.getSolution().col_value, dtype=float)
        upper = min(upper, solve.best_obj)
        if solve.best_obj < 0 and solve.best_sol is not None:
            cand = input_from(built, solve.best_sol, x0.shape).to(x0.device)
            checked = check_counterexample(model, x0, cand, y, eps)
            if checked is not None:
                res.status, res.counterexample = "counterexample", checked.cpu()
                res.margin_upper = solve.best_obj
                res.detail = f"class {j}"
                return
            if solve.dual <= 0 and status in (hs.kOptimal, hs.kInterrupt):
                res.status = "error"
                res.detail = (
                    f"class {j}: solver point (margin {solve.best_obj:.3g}) failed the "
                    "forward-pass check; the true margin is within solver tolerance of 0"
                )
                res.margin_upper = solve.best_obj
                return
        if 0 < solve.dual < math.inf and status in (hs.kOptimal, hs.kInterrupt):
            # a proof only from a run that ended normally, with a finite bound (the
            # problem always has x0 as a feasible point, so +inf is never a real bound)
            proven.append(solve.dual)
            continue
        if status == hs.kTimeLimit or time.perf_counter() > deadline:
            res.status, res.detail = "timeout", f"class {j} unresolved"
            res.margin_upper = None if math.isinf(upper) else upper
            # how far from a proof: the solver's bound on this class, CROWN's on the rest
            rest = [float(crown_margins[k]) for k in order[pos + 1 :]]
            low = min(proven + [max(solve.dual, float(crown_margins[j]))] + rest)
            res.margin_lower = min(low, 0.0)  # > 0 only for a proof
            return
        res.status = "error"
        res.detail = f"class {j}: solver status {m.h.modelStatusToString(status)}"
        return
    else:
        res.status = "verified"
        res.margin_lower = float(min(proven)) if proven else lower
        return


def _check_exact_args(norm: float | str, time_limit: float) -> None:
    try:
        l_inf = math.isinf(parse_norm(norm))
    except NormError:
        l_inf = False
    if not l_inf:
        raise ConfigError(f"exact verification handles the l_inf norm only, got {norm!r}")
    if not (time_limit > 0):
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")


def check_points(
    x: torch.Tensor, epsilon: float, indices: Sequence[int] | None
) -> tuple[float, list[int]]:
    """The checks a complete verifier runs on its points: images ``x`` in [0,1] and a
    finite ``epsilon >= 0`` (ConfigError otherwise); returns the radius and the labels of
    the results (``indices``, default ``0..N-1``)."""
    check_metric_inputs(x)
    if not (math.isfinite(float(epsilon)) and float(epsilon) >= 0):
        raise ConfigError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    n = x.shape[0]
    return float(epsilon), list(range(n)) if indices is None else [int(i) for i in indices]


def verify_exact(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    norm: float | str = "inf",
    time_limit: float = 30.0,
    tighten: bool = False,
    lp_fraction: float = LP_FRACTION,
    cex_tol: float = CEX_TOL,
    indices: Sequence[int] | None = None,
) -> list[ExactResult]:
    """Exact l_inf verdict per point of ``x`` ``(N, C, H, W)`` with labels ``y`` ``(N,)``.

    ``epsilon``: l_inf radius in [0,1] pixel space (ball intersected with the [0,1]
    box). ``time_limit``: seconds per point for building and solving its MILP, all
    classes together; the CROWN bounds that set its big-M constants come from one
    batched pass beforehand (each point's ``seconds`` includes its share). ``tighten``:
    LP-tighten the pre-activation bounds of ReLU layers after the first, nearest
    to stable first, for at most ``lp_fraction`` of the time limit. ``cex_tol``:
    the solver stops early at a point whose margin is below ``-cex_tol`` logits.
    Misclassified points are counterexamples at distance 0; points CROWN certifies
    need no MILP. ``indices`` label the results (default ``0..N-1``). The model
    runs in eval mode and is restored.
    """
    _check_exact_args(norm, time_limit)
    eps, ids = check_points(x, epsilon, indices)
    n = x.shape[0]
    device = model_device(model)
    with eval_mode(model):
        layers = parse_network(model, x.shape[1:], device=device)
        y = check_labels(y, n, layers[-1].out_shape[0]).to(device)
        x = x.to(device)
        return verify_many(model, layers, x, y, eps, None, ids, time_limit=time_limit,
                            tighten=tighten, lp_fraction=lp_fraction, cex_tol=cex_tol)  # fmt: skip


def verify_many(
    model: nn.Module, layers: list[Layer], x: torch.Tensor, y: torch.Tensor, eps: float,
    bounds: list[PointBounds] | None, ids: Sequence[int],
    on_point: Callable[[ExactResult], None] | None = None, **kw: Any,
) -> list[ExactResult]:  # fmt: skip
    """The exact verdict per point; ``bounds``: the points' CROWN bounds when already
    computed (else one batched pass here, for the correctly classified points).
    ``on_point`` is called with each verdict as soon as it is known (a progress bar)."""
    if any(layer.kind in ("fork", "add") for layer in layers):
        network_stages(layers)  # its one-line ModelError, before any point is decided
    n = x.shape[0]
    start = time.perf_counter()
    wrong = [is_misclassified(model, x[i], int(y[i])) for i in range(n)]
    clean_s = (time.perf_counter() - start) / max(n, 1)
    if bounds is None:
        todo = [i for i in range(n) if not wrong[i]]
        found = _point_bounds(model, x[todo], y[todo], eps) if todo else []
        of = dict(zip(todo, found, strict=True))
    else:
        of = dict(enumerate(bounds))
    cache: list[list[Stage]] = []

    def stages() -> list[Stage]:
        if not cache:
            cache.append(network_stages(layers))
        return cache[0]

    out: list[ExactResult] = []
    for i in range(n):
        xi = x[i]
        if wrong[i]:
            out.append(ExactResult(ids[i], eps, "counterexample", "clean", clean_s,
                                   counterexample=xi.cpu(), margin_upper=0.0,
                                   detail="misclassified"))  # fmt: skip
        else:
            out.append(_verify_one(model, xi, int(y[i]), eps, of[i], stages, index=ids[i], **kw))
        log.debug("point %d eps %g: %s", ids[i], eps, out[-1].status)
        if on_point is not None:
            on_point(out[-1])
    return out
