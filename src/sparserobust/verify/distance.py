"""The exact minimal adversarial l_inf distance per point, by one MILP per class.

The smallest ``t`` with ``||x' - x||_inf <= t``, ``x'`` in [0,1] and another class
scoring at least the label's, bracketed between the solver's dual bound and the
distance of a counterexample that our own forward pass confirms. Distances in [0,1]
pixel space; the encoding is :mod:`sparserobust.verify.milp`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.metrics.margin import check_metric_inputs
from sparserobust.utils import eval_mode, model_device
from sparserobust.verify.certification import check_labels, network_bounds
from sparserobust.verify.exact import is_misclassified
from sparserobust.verify.milp import BuiltMilp, build_milp, input_from
from sparserobust.verify.network import parse_network
from sparserobust.verify.stages import network_stages

log = logging.getLogger(__name__)

__all__ = ["DistanceResult", "minimal_distance"]


@dataclass
class DistanceResult:
    """The smallest adversarial l_inf distance of one point, bracketed.

    The exact minimal distance ``d`` (in [0,1] pixel space, [0,1] box respected)
    satisfies ``lower <= d <= upper``. ``lower`` is the solver's proven bound
    (``radius`` when no adversarial exists within it); ``upper`` is the distance
    of ``counterexample``, an input our forward pass classifies as another class
    (None when none was found). ``status``: ``exact`` (``upper - lower <= tol``),
    ``beyond`` (no adversarial within ``radius``), ``timeout`` or ``error``.
    """

    index: int
    status: str
    lower: float
    upper: float | None
    radius: float
    seconds: float
    counterexample: torch.Tensor | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (no tensors)."""
        return {
            "index": self.index,
            "status": self.status,
            "lower": self.lower,
            "upper": self.upper,
            "radius": self.radius,
            "seconds": round(self.seconds, 4),
            "detail": self.detail,
        }


def _push_out(
    model: nn.Module, x0: torch.Tensor, cand: torch.Tensor, y: int, j: int
) -> tuple[torch.Tensor, float] | None:
    """A checked adversarial next to the boundary point ``cand`` (where ``f_j = f_y``).

    Tries, for growing steps ``s``, the ray ``x0 + (1 + s)(cand - x0)`` and a signed
    gradient step of ``f_j - f_y`` of size ``s`` (l_inf radius grown by ``s``), both
    clipped to [0,1]. Returns ``(x, l_inf distance)`` or None.
    """
    cand = cand.to(x0.dtype)
    d = cand - x0
    radius = float(d.abs().max())
    xg = cand.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg.unsqueeze(0))[0]
        (grad,) = torch.autograd.grad(logits[j] - logits[y], xg)
    for s in (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        ray = (x0 + (1 + s) * d).clamp(0, 1)
        lo, hi = (x0 - radius - s).clamp(0, 1), (x0 + radius + s).clamp(0, 1)
        step = torch.minimum(torch.maximum(cand + s * grad.sign(), lo), hi)
        for x in (ray, step):
            if is_misclassified(model, x, y):
                return x, float((x.double() - x0.double()).abs().max())
    return None


def _attack_radius(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: Sequence[float], seed: int
) -> torch.Tensor:
    """Per point the l_inf distance of the closest PGD adversarial over ``grid``, inf if none."""
    from sparserobust.attacks.registry import get_attack

    res = get_attack("pgd", "inf").run(model, x, y, epsilons=list(grid), seed=seed)
    dist = res.distances.double().cpu()  # (E, N), inf where failed
    return dist.min(0).values


def _distance_one(
    model: nn.Module, x0: torch.Tensor, y: int, radius: float, time_limit: float, tol: float,
    index: int,
) -> DistanceResult:  # fmt: skip
    start = time.perf_counter()
    deadline = start + time_limit
    res = DistanceResult(index, "error", 0.0, None, radius, 0.0)
    try:
        xb, yb = x0.unsqueeze(0), torch.tensor([y], device=x0.device)
        crown = network_bounds(model, xb, yb, epsilon=radius, method="crown")
        margins = crown.margins[0].cpu().double().numpy()
        stages = network_stages(crown.layers)
        pre = {i: (lo[0].cpu().numpy(), hi[0].cpu().numpy()) for i, (lo, hi) in crown.pre.items()}
        xf = x0.double().flatten().cpu().numpy()
        lo_in, hi_in = np.clip(xf - radius, 0, 1), np.clip(xf + radius, 0, 1)
        built = build_milp(stages, pre, lo_in, hi_in, tighten=False, deadline=deadline,
                       exact_first=True)  # fmt: skip
        m = built.model
        (tcol,) = m.add_cols(np.zeros(1), np.array([radius]))
        k = len(built.input_cols)
        rows = np.arange(k)
        tpart = sp.csr_matrix((np.ones(k), (rows, np.full(k, tcol))), shape=(k, m.ncols))
        xpart = sp.csr_matrix((np.ones(k), (rows, built.input_cols)), shape=(k, m.ncols))
        xin = xf[built.input_index]
        m.add_rows(xpart - tpart, np.full(k, -math.inf), xin)  # x - t <= x0
        m.add_rows(xpart + tpart, xin, np.full(k, math.inf))  # x + t >= x0
        m.make_integer()
        m.set_objective(sp.csr_matrix(([1.0], ([0], [tcol])), shape=(1, m.ncols)), True)
        m.h.setOptionValue("mip_rel_gap", 1e-4)
        _distance_classes(model, x0, y, built, tcol, margins, deadline, tol, res)
    except Exception as exc:  # a solver failure is a status, never a crash
        log.warning("point %d: minimal distance failed: %s", index, exc)
        res.status, res.detail = "error", f"{type(exc).__name__}: {exc}"
    res.seconds = time.perf_counter() - start
    return res


def _distance_classes(
    model: nn.Module, x0: torch.Tensor, y: int, built: BuiltMilp, tcol: int,
    crown_margins: np.ndarray, deadline: float, tol: float, res: DistanceResult,
) -> None:  # fmt: skip
    m = built.model
    hs = m.hp.HighsModelStatus
    radius = res.radius
    cutoff = radius  # no class needs to be searched beyond the best distance found
    lowers: list[float] = []
    timed_out = False
    for j in [j for j in np.argsort(crown_margins) if j != y]:
        if crown_margins[j] > 0:
            lowers.append(radius)  # CROWN: no class-j adversarial within the radius
            continue
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            lowers.append(0.0)
            timed_out = True
            continue
        row = built.logits[j] - built.logits[y]  # f_j - f_y >= 0: class j wins
        const = float(built.logits0[j] - built.logits0[y])
        m.add_rows(row, np.array([-const]), np.array([math.inf]))
        m.h.changeColBounds(tcol, 0.0, cutoff)
        m.limit(remaining)
        m.h.run()
        status = m.h.getModelStatus()
        info = m.h.getInfo()
        if status == hs.kInfeasible:
            lowers.append(cutoff)
        elif status in (hs.kOptimal, hs.kTimeLimit):
            obj = float(info.objective_function_value)
            dual = float(info.mip_dual_bound) if built.binaries else obj
            if status == hs.kOptimal and not built.binaries:
                dual = obj
            lowers.append(max(0.0, dual) if math.isfinite(dual) else 0.0)
            timed_out |= status == hs.kTimeLimit
            if math.isfinite(obj) and obj <= cutoff:
                sol = np.array(m.h.getSolution().col_value, dtype=float)
                cand = input_from(built, sol, x0.shape).to(x0.device)
                pushed = _push_out(model, x0, cand, y, int(j))
                if pushed is not None and (res.upper is None or pushed[1] < res.upper):
                    res.counterexample, res.upper = pushed[0].cpu(), pushed[1]
                    cutoff = min(cutoff, pushed[1])
        else:
            m.h.deleteRows(1, np.array([m.h.getNumRow() - 1], dtype=np.int32))
            res.status = "error"
            res.detail = f"class {j}: solver status {m.h.modelStatusToString(status)}"
            res.lower = 0.0
            return
        m.h.deleteRows(1, np.array([m.h.getNumRow() - 1], dtype=np.int32))
    res.lower = float(min(lowers)) if lowers else radius
    if res.upper is not None:
        res.lower = min(res.lower, res.upper)
    if timed_out:
        res.status = "timeout"
    elif res.upper is None:
        res.status = "beyond" if res.lower >= radius else "error"
        if res.status == "error":
            res.detail = "solver found boundary points that failed the forward-pass check"
    else:
        res.status = "exact" if res.upper - res.lower <= tol else "error"
        if res.status == "error":
            res.detail = f"bracket [{res.lower:.6g}, {res.upper:.6g}] wider than tol {tol:g}"


def minimal_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    radius: float | None = None,
    time_limit: float = 60.0,
    tol: float = 1e-3,
    seed: int = 0,
    attack_grid: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
    indices: Sequence[int] | None = None,
) -> list[DistanceResult]:
    """Exact minimal adversarial l_inf distance per point of ``x`` ``(N, C, H, W)``.

    Solves ``min t`` subject to ``||x' - x||_inf <= t``, ``x'`` in [0,1] and some
    class ``j != y`` scoring at least ``f_y``, one MILP per class, with big-M
    bounds valid for the whole search radius. The radius is ``radius`` if given,
    else the distance of the closest PGD adversarial over ``attack_grid`` (seeded
    by ``seed``; the largest grid value when PGD fails). ``tol``: the largest
    accepted gap ``upper - lower`` in [0,1] pixel units for status ``exact``.
    ``time_limit``: seconds per point. Misclassified points have distance 0.
    """
    check_metric_inputs(x)
    if not (time_limit > 0 and tol > 0):
        raise ConfigError("minimal_distance needs time_limit > 0 and tol > 0")
    n = x.shape[0]
    ids = list(range(n)) if indices is None else [int(i) for i in indices]
    device = model_device(model)
    out: list[DistanceResult] = []
    with eval_mode(model):
        layers = parse_network(model, x.shape[1:], device=device)
        y = check_labels(y, n, layers[-1].out_shape[0])
        if radius is None:
            radii = _attack_radius(model, x.to(device), y.to(device), attack_grid, seed)
            radii = torch.where(torch.isfinite(radii), radii, float(max(attack_grid)))
        else:
            if not (math.isfinite(float(radius)) and float(radius) > 0):
                raise ConfigError(f"radius must be a number > 0, got {radius!r}")
            radii = torch.full((n,), float(radius), dtype=torch.float64)
        for i in range(n):
            xi, yi = x[i].to(device), int(y[i])
            if is_misclassified(model, xi, yi):
                out.append(DistanceResult(ids[i], "exact", 0.0, 0.0, 0.0, 0.0, xi.cpu()))
                continue
            out.append(_distance_one(model, xi, yi, float(radii[i]), time_limit, tol, ids[i]))
    return out
