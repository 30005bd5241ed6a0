"""Exact l_inf verification by mixed-integer linear programming (MIPVerify style).

Tjeng, Xiao & Tedrake (ICLR 2019): a ReLU ``y = max(z, 0)`` with pre-activation
bounds ``l < 0 < u`` is encoded exactly with one binary ``d``::

    y >= z,  y >= 0,  y <= u d,  y <= z - l (1 - d)

and a max-pool window ``y = max_i z_i`` with one binary per input that can be
the maximum (``sum_i a_i = 1``, ``y >= z_i``, ``y <= z_i + (1 - a_i)(U - l_i)``).
Big-M constants come from the tightest bounds available: CROWN
(:mod:`sparserobust.metrics.certify`), then optionally LP tightening (each
unstable neuron minimised and maximised over the LP relaxation of the layers
before it). Stable ReLUs need no binary (active: ``y = z`` substituted; inactive:
dropped), neither do neurons whose outgoing weights were all pruned, nor input
pixels no kept weight reads. The solver is HiGHS (``highspy``).

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
margins of about 1e-6 logits. :func:`minimal_distance` brackets the smallest
adversarial l_inf distance between the solver's dual bound and a checked
counterexample.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.metrics.certify import (
    CertifyResult,
    Layer,
    _check_labels,
    _window_index,
    certify,
    network_bounds,
    parse_network,
)
from sparserobust.metrics.margin import check_metric_inputs
from sparserobust.utils import eval_mode, model_device

log = logging.getLogger(__name__)

__all__ = [
    "STATUSES",
    "DistanceResult",
    "ExactResult",
    "minimal_distance",
    "verify_exact",
    "verify_points",
]

STATUSES = ("verified", "counterexample", "timeout", "error")
_NORM_TOL = 1e-6  # relative slack of the in-ball check (float32 pixels)
_BOUND_SLACK = 1e-6  # absolute widening of LP-tightened bounds against solver tolerance
_BOUND_BATCH = 32  # points per batched CROWN pass before the MILPs
_LP_FRACTION = 0.25  # share of a point's time limit LP tightening may use
_CEX_TOL = 1e-4  # the solver stops at a point whose margin is below -_CEX_TOL


def _new_highs() -> Any:
    """A silent ``highspy.Highs`` (its one-time banner goes to the null device)."""
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigError("exact verification needs highspy: pip install highspy") from exc
    if not getattr(_new_highs, "_banner_done", False):
        with open(os.devnull, "w") as null, contextlib.ExitStack() as stack:
            try:
                saved = os.dup(1)
            except OSError:  # no file descriptor 1: nothing to hide
                saved = -1
            if saved >= 0:
                os.dup2(null.fileno(), 1)
                stack.callback(os.close, saved)
                stack.callback(os.dup2, saved, 1)
            h = highspy.Highs()
        _new_highs._banner_done = True  # type: ignore[attr-defined]
    else:
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    # The feasibility-jump heuristic runs before the root LP, where no callback can stop
    # it: on dense LeNet-5 (13k binaries, 2.4M nonzeros) it took 16 s against a 3 s cap.
    # Without it, LeNet-300-100's verdicts and times stayed the same (measured at 80 and
    # 90% sparsity, eps 0.05: one more point verified at 80%).
    h.setOptionValue("mip_heuristic_run_feasibility_jump", False)
    return h


# -- the network as sparse affine stages -----------------------------------------------------


@dataclass
class _Stage:
    """An affine map ``z = M a + c`` or a nonlinear layer (``relu`` / ``maxpool``)."""

    kind: str
    matrix: sp.csr_matrix | None = None
    offset: np.ndarray | None = None
    layer: Layer | None = None
    index: int = -1  # position of a nonlinear layer in the parsed layers (bounds key)


def _conv_matrix(layer: Layer) -> sp.csr_matrix:
    """The convolution (without bias) as a sparse ``(n_out, n_in)`` matrix."""
    assert layer.weight is not None
    n_in = math.prod(layer.in_shape)
    rows, cols, vals = [], [], []
    chunk = max(1, 2_000_000 // max(1, math.prod(layer.out_shape)))
    for i0 in range(0, n_in, chunk):
        i1 = min(n_in, i0 + chunk)
        basis = torch.zeros(i1 - i0, n_in, dtype=layer.weight.dtype, device=layer.weight.device)
        basis[torch.arange(i1 - i0), torch.arange(i0, i1)] = 1.0
        out = F.conv2d(
            basis.view(-1, *layer.in_shape), layer.weight, None, layer.stride, layer.padding,
            layer.dilation, layer.groups,
        ).flatten(1)  # fmt: skip
        c, r = out.nonzero(as_tuple=True)
        rows.append(r.cpu().numpy())
        cols.append((c + i0).cpu().numpy())
        vals.append(out[c, r].cpu().numpy())
    n_out = math.prod(layer.out_shape)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_out, n_in)
    )


def _affine_of(layer: Layer) -> tuple[sp.csr_matrix, np.ndarray] | None:
    """``(M, c)`` of an affine layer in float64; None for Flatten."""
    if layer.kind == "flatten":
        return None
    assert layer.weight is not None and layer.bias is not None
    if layer.kind == "affine":
        scale = layer.channel_view(layer.weight).expand(layer.in_shape).reshape(-1)
        shift = layer.channel_view(layer.bias).expand(layer.in_shape).reshape(-1)
        return sp.diags(scale.double().cpu().numpy()).tocsr(), shift.double().cpu().numpy()
    if layer.kind == "linear":
        return sp.csr_matrix(layer.weight.double().cpu().numpy()), layer.bias.double().cpu().numpy()
    hw = math.prod(layer.out_shape[1:])
    offset = layer.bias.double().cpu().numpy().repeat(hw)
    return _conv_matrix(layer), offset


def _stages(layers: Sequence[Layer]) -> list[_Stage]:
    """Consecutive affine layers composed into one sparse map; nonlinear layers kept."""
    out: list[_Stage] = []
    cur: tuple[sp.csr_matrix, np.ndarray] | None = None
    for i, layer in enumerate(layers):
        if layer.nonlinear:
            if cur is not None:
                out.append(_Stage("affine", cur[0], cur[1]))
                cur = None
            out.append(_Stage(layer.kind, layer=layer, index=i))
            continue
        aff = _affine_of(layer)
        if aff is None:
            continue
        cur = aff if cur is None else ((aff[0] @ cur[0]).tocsr(), aff[0] @ cur[1] + aff[1])
    if cur is not None:
        out.append(_Stage("affine", cur[0], cur[1]))
    for s in out:
        if s.matrix is not None:
            s.matrix.eliminate_zeros()
    return out


# -- the MILP --------------------------------------------------------------------------------


class _Model:
    """A HiGHS model grown layer by layer. A layer's values are kept as sparse
    expressions over the columns: ``values = E @ cols + e0``."""

    def __init__(self) -> None:
        import highspy

        self.hp = highspy
        self.h = _new_highs()
        # Our own reductions leave HiGHS's presolve nothing to remove (measured on
        # LeNet-300), but it took up to 10 s, uninterruptible; off, LPs also warm-start.
        self.h.setOptionValue("presolve", "off")
        self.ncols = 0
        self.binaries: list[np.ndarray] = []

    def add_cols(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        n = len(lower)
        if n:
            self.h.addVars(n, np.asarray(lower, float), np.asarray(upper, float))
        idx = np.arange(self.ncols, self.ncols + n, dtype=np.int32)
        self.ncols += n
        return idx

    def add_rows(self, a: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
        if a.shape[0] == 0:
            return
        a = sp.csr_matrix(a)
        a.resize((a.shape[0], self.ncols))
        a.sort_indices()
        self.h.addRows(
            a.shape[0], np.asarray(lower, float), np.asarray(upper, float), a.nnz,
            a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(float),
        )  # fmt: skip

    def widen(self, e: sp.csr_matrix) -> sp.csr_matrix:
        e = sp.csr_matrix(e)
        e.resize((e.shape[0], self.ncols))
        return e

    def set_objective(self, row: sp.csr_matrix, sense_min: bool = True) -> None:
        cost = np.zeros(self.ncols)
        row = self.widen(row)
        cost[row.indices] = row.data
        self.h.changeColsCost(self.ncols, np.arange(self.ncols, dtype=np.int32), cost)
        sense = self.hp.ObjSense.kMinimize if sense_min else self.hp.ObjSense.kMaximize
        self.h.changeObjectiveSense(sense)

    def make_integer(self) -> None:
        if not self.binaries:
            return
        idx = np.concatenate(self.binaries).astype(np.int32)
        kinds = np.array([self.hp.HighsVarType.kInteger] * len(idx))
        self.h.changeColsIntegrality(len(idx), idx, kinds)


def _lp_tighten(
    m: _Model, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    rows: np.ndarray, deadline: float,
) -> tuple[np.ndarray, np.ndarray, bool]:  # fmt: skip
    """Minimise and maximise the neurons ``rows`` over the current LP relaxation.

    Returns tightened copies of ``lo``/``hi`` (widened by a small slack against
    solver tolerance) and whether all neurons were done before ``deadline``.
    """
    lo, hi = lo.copy(), hi.copy()
    optimal = m.hp.HighsModelStatus.kOptimal
    for i in rows:
        for sense_min in (True, False):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return lo, hi, False
            m.h.setOptionValue("time_limit", m.h.getRunTime() + remaining)
            if (sense_min and lo[i] >= 0) or (not sense_min and hi[i] <= 0):
                continue  # already stable on this side
            m.set_objective(e[i], sense_min)
            m.h.run()
            if m.h.getModelStatus() != optimal:
                continue
            v = m.h.getInfo().objective_function_value + e0[i]
            slack = _BOUND_SLACK * (1 + abs(v))
            if sense_min:
                lo[i] = max(lo[i], v - slack)
            else:
                hi[i] = min(hi[i], v + slack)
    return lo, hi, True


def _next_reads(stages: Sequence[_Stage], k: int, n: int) -> np.ndarray:
    """Bool ``(n,)``: outputs of stage ``k`` that the next affine stage reads (a nonzero column)."""
    for s in stages[k + 1 :]:
        if s.kind == "affine" and s.matrix is not None:
            return np.asarray(s.matrix.getnnz(axis=0) > 0).reshape(-1)
        if s.kind != "affine":
            break
    return np.ones(n, dtype=bool)


@dataclass
class _Built:
    model: _Model
    logits: sp.csr_matrix
    logits0: np.ndarray
    input_cols: np.ndarray
    input_index: np.ndarray
    x_fixed: np.ndarray
    unstable_lp: int
    lp_complete: bool
    binaries: int


def _build(
    stages: Sequence[_Stage],
    pre: dict[int, tuple[np.ndarray, np.ndarray]],
    lo_in: np.ndarray,
    hi_in: np.ndarray,
    *,
    tighten: bool,
    deadline: float,
    exact_first: bool,
    lp_deadline: float | None = None,
) -> _Built:
    """The MILP of the network over the input box ``[lo_in, hi_in]`` (flat, float64)."""
    m = _Model()
    reads = _next_reads(stages, -1, lo_in.size)
    free = (hi_in > lo_in) & reads
    input_index = np.nonzero(free)[0]
    cols = m.add_cols(lo_in[free], hi_in[free])
    e = sp.csr_matrix((np.ones(len(cols)), (input_index, cols)), shape=(lo_in.size, m.ncols))
    e0 = np.where(free, 0.0, lo_in)
    unstable_lp = 0
    lp_complete = True
    first_nonlinear = True
    for k, st in enumerate(stages):
        if st.kind == "affine":
            assert st.matrix is not None and st.offset is not None
            e = (st.matrix @ m.widen(e)).tocsr()
            e0 = st.matrix @ e0 + st.offset
            continue
        lo, hi = (v.reshape(-1).astype(np.float64) for v in pre[st.index])
        n_out = lo.size if st.kind == "relu" else math.prod(st.layer.out_shape)  # type: ignore[union-attr]
        used = _next_reads(stages, k, n_out)  # over this layer's outputs
        if st.kind == "relu":
            e, e0 = _materialise(m, e, e0, lo, hi, used & (hi > 0))
        else:  # a max-pool input matters when its window is read
            assert st.layer is not None
            e, e0 = _materialise(m, e, e0, lo, hi, _window_inputs(st.layer, used))
        if tighten and not (exact_first and first_nonlinear) and st.kind == "relu":
            todo = np.nonzero((lo < 0) & (hi > 0))[0]
            # nearest to stable first: the neurons LP tightening most likely decides
            closeness = np.minimum(-lo[todo], hi[todo]) / (hi[todo] - lo[todo])
            todo = todo[np.argsort(closeness, kind="stable")]
            lp_end = deadline if lp_deadline is None else min(deadline, lp_deadline)
            lo, hi, done = _lp_tighten(m, m.widen(e), e0, lo, hi, todo, lp_end)
            lp_complete &= done
        first_nonlinear = False
        if st.kind == "relu":
            unstable = (lo < 0) & (hi > 0)
            unstable_lp += int(unstable.sum())
            unstable &= used
            e, e0 = _relu_constraints(m, m.widen(e), e0, lo, hi, unstable, used)
        else:
            assert st.layer is not None
            e, e0 = _maxpool_constraints(m, m.widen(e), e0, lo, hi, st.layer, used)
    return _Built(m, m.widen(e), e0, cols, input_index, lo_in.copy(), unstable_lp, lp_complete,
                  sum(len(b) for b in m.binaries))  # fmt: skip


def _materialise(
    m: _Model, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    keep: np.ndarray,
) -> tuple[sp.csr_matrix, np.ndarray]:  # fmt: skip
    """Pre-activations ``z = E v + e0`` of the rows ``keep`` as new columns (bounds
    ``[lo, hi]``, widened by 1e-7 against rounding) tied by equality rows.

    Later constraints then read one column per neuron instead of its whole
    expression, which keeps the model as sparse as the weights (substituting
    expressions would multiply the layers' matrices out). Other rows become 0.
    """
    idx = np.nonzero(keep)[0]
    k = len(idx)
    pad = 1e-7 * (1 + np.abs(lo[idx])), 1e-7 * (1 + np.abs(hi[idx]))
    z = m.add_cols(lo[idx] - pad[0], hi[idx] + pad[1])
    ident = sp.csr_matrix((np.ones(k), (np.arange(k), z)), shape=(k, m.ncols))
    m.add_rows(m.widen(e[idx]) - ident, -e0[idx], -e0[idx])  # E v - z = -e0
    n = lo.size
    return sp.csr_matrix((np.ones(k), (idx, z)), shape=(n, m.ncols)), np.zeros(n)


def _window_inputs(layer: Layer, used: np.ndarray) -> np.ndarray:
    """Bool over a max-pool layer's inputs: those in some window whose output is read."""
    c, h, w = layer.in_shape
    idx = _window_index(layer, torch.device("cpu")).numpy()  # (K, L)
    out = np.zeros(c * h * w, dtype=bool)
    used = used.reshape(c, -1)
    for ch in range(c):
        out[ch * h * w + idx[:, used[ch]].reshape(-1)] = True
    return out


def _relu_constraints(
    m: _Model, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    unstable: np.ndarray, used: np.ndarray,
) -> tuple[sp.csr_matrix, np.ndarray]:  # fmt: skip
    n = lo.size
    keep = (lo >= 0) & used  # stable active: y = z, substituted
    u_idx = np.nonzero(unstable)[0]
    k = len(u_idx)
    y = m.add_cols(np.zeros(k), hi[u_idx])
    d = m.add_cols(np.zeros(k), np.ones(k))
    m.binaries.append(d)
    ez = m.widen(e[u_idx])
    iy = sp.csr_matrix((np.ones(k), (np.arange(k), y)), shape=(k, m.ncols))
    idd = sp.csr_matrix((np.ones(k), (np.arange(k), d)), shape=(k, m.ncols))
    inf = np.full(k, math.inf)
    ez0 = e0[u_idx]
    m.add_rows(iy - ez, ez0, inf)  # y >= z
    m.add_rows(iy - idd.multiply(hi[u_idx][:, None]).tocsr(), -inf, np.zeros(k))  # y <= u d
    m.add_rows(iy - ez - idd.multiply(lo[u_idx][:, None]).tocsr(), -inf, ez0 - lo[u_idx])
    # new expressions: active rows kept, unstable rows -> y, the rest 0
    e_keep = sp.diags(keep.astype(float)) @ m.widen(e)
    e_new = e_keep + sp.csr_matrix((np.ones(k), (u_idx, y)), shape=(n, m.ncols))
    return e_new.tocsr(), np.where(keep, e0, 0.0)


def _maxpool_constraints(
    m: _Model, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    layer: Layer, used: np.ndarray,
) -> tuple[sp.csr_matrix, np.ndarray]:  # fmt: skip
    """Max-pool outputs as expressions over the columns, all windows at once.

    Per window read by the next layer: the inputs that can be the max (upper bound >=
    the largest lower bound) are its candidates. One candidate: the output is that
    input. Several: a column ``y`` in ``[max l, max u]`` with ``y >= z_i``, a binary
    ``a_i`` per candidate with ``y <= z_i + (max u - l_i)(1 - a_i)`` and ``sum a_i = 1``.
    """
    c, h, w = layer.in_shape
    idx = _window_index(layer, torch.device("cpu")).numpy()  # (K, L)
    n_win = idx.shape[1]
    # flat input position of every (window, offset), windows ordered (channel, window)
    pos = (np.arange(c)[:, None, None] * (h * w) + idx.T[None]).reshape(c * n_win, -1)
    lmax = lo[pos].max(1)
    cand = (hi[pos] >= lmax[:, None]) & used[:, None]
    count = cand.sum(1)
    single = np.nonzero(count == 1)[0]
    multi = np.nonzero(count > 1)[0]
    n_out = c * n_win
    # one candidate: the output is that input's expression
    single_pos = pos[single, cand[single].argmax(1)]
    pick = sp.csr_matrix((np.ones(len(single)), (single, single_pos)), shape=(n_out, lo.size))
    e0_out = np.zeros(n_out)
    e0_out[single] = e0[single_pos]
    # several: y, binaries and three row blocks
    umax = np.where(cand, hi[pos], -math.inf).max(1)[multi]
    yc = m.add_cols(lmax[multi], umax)
    win_of, off = np.nonzero(cand[multi])  # candidate q: window multi[win_of[q]]
    q = len(win_of)
    a = m.add_cols(np.zeros(q), np.ones(q))
    m.binaries.append(a)
    cpos = pos[multi[win_of], off]
    big = umax[win_of] - lo[cpos]
    rows = np.arange(q)
    ez = m.widen(e[cpos])
    iy = sp.csr_matrix((np.ones(q), (rows, yc[win_of])), shape=(q, m.ncols))
    ia = sp.csr_matrix((big, (rows, a)), shape=(q, m.ncols))
    m.add_rows(iy - ez, e0[cpos], np.full(q, math.inf))  # y >= z_i
    m.add_rows(iy - ez + ia, np.full(q, -math.inf), e0[cpos] + big)
    one = sp.csr_matrix((np.ones(q), (win_of, a)), shape=(len(multi), m.ncols))
    m.add_rows(one, np.ones(len(multi)), np.ones(len(multi)))  # exactly one input is the max
    out_y = sp.csr_matrix((np.ones(len(multi)), (multi, yc)), shape=(n_out, m.ncols))
    return (pick @ m.widen(e) + out_y).tocsr(), e0_out


# -- verification -----------------------------------------------------------------------------


@dataclass
class ExactResult:
    """The exact verdict for one point at one l_inf radius.

    - ``status``: one of :data:`STATUSES`; ``by``: what decided it (``milp``,
      ``crown``: certified by bounds alone, ``attack``: a PGD adversarial,
      ``clean``: misclassified without perturbation).
    - ``epsilon``: l_inf radius in [0,1] pixel space; ``seconds``: wall time spent
      on this point (bounds, LP tightening, every class's MILP).
    - ``margin_lower``: a proven lower bound of ``min_j f_y - f_j`` over the threat
      set (logits; > 0 when verified), or None; ``margin_upper``: the smallest
      margin the solver found (< 0 for a counterexample), or None.
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


def _is_adversarial(model: nn.Module, x_adv: torch.Tensor, y: int) -> bool:
    """Our forward pass: some other class's logit strictly beats class ``y``."""
    with torch.no_grad():
        logits = model(x_adv.unsqueeze(0))[0]
    own = logits[y]
    other = torch.cat([logits[:y], logits[y + 1 :]]).max()
    return bool(other > own)


def _check_counterexample(
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
    return x if _is_adversarial(model, x, y) else None


class _Solve:
    """One class's MILP run with early stops: at a clear counterexample, at a proof,
    or at the point's wall-clock ``deadline`` (HiGHS's own time limit can overrun)."""

    def __init__(self, built: _Built, const: float, cex_tol: float, deadline: float) -> None:
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
        # feasible): not a proof, and not a reason to stop (_run_checked retries)
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


def _input_from(built: _Built, sol: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    x = built.x_fixed.copy()
    x[built.input_index] = sol[built.input_cols]
    return torch.from_numpy(x).view(*shape)


@dataclass
class _PointBounds:
    """CROWN bounds of one point (from a batched pass) and its unstable ReLU counts."""

    pre: dict[int, tuple[np.ndarray, np.ndarray]]
    margins: np.ndarray
    unstable: dict[str, int]
    seconds: float  # this point's share of the batched bound computation


def _bounds_from(crown: CertifyResult, indices: Sequence[int]) -> list[_PointBounds]:
    """The bounds that ``certify(keep_bounds=...)`` kept, for the points ``indices``."""
    assert crown.pre is not None
    share = crown.seconds / max(int(crown.certified.numel()), 1)
    relu_crown, relu_ibp = crown.unstable_relus(), crown.unstable_relus(ibp=True)
    pre = {j: (lo.numpy(), hi.numpy()) for j, (lo, hi) in crown.pre.items()}
    return [
        _PointBounds(
            {j: (lo[i], hi[i]) for j, (lo, hi) in pre.items()},
            crown.margins[i].double().numpy(),
            {"ibp": int(relu_ibp[i]), "crown": int(relu_crown[i])},
            share,
        )
        for i in indices
    ]


def _point_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float
) -> list[_PointBounds]:
    """CROWN bounds of every point, :data:`_BOUND_BATCH` at a time: one batched pass
    instead of one per point (on LeNet-5 the per-point passes took longer than a 3 s
    cap)."""
    crown = certify(model, x, y, epsilon=eps, method="crown", batch_size=_BOUND_BATCH,
                    keep_bounds=x.shape[0])  # fmt: skip
    return _bounds_from(crown, range(x.shape[0]))


def _verify_one(
    model: nn.Module,
    x0: torch.Tensor,
    y: int,
    eps: float,
    bounds: _PointBounds,
    stages: Callable[[], list[_Stage]],
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
        built = _build(network, bounds.pre, lo_in, hi_in, tighten=tighten, deadline=deadline,
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


def _run_checked(m: _Model, deadline: float) -> Any:
    """Run HiGHS; on an "infeasible" verdict run it again with its presolve on.

    Every MILP here has a feasible point (the clean input), so "infeasible" is a
    solver error. HiGHS 1.16 with presolve off returns it on rare models (1 point of
    the 18,600 of the LeNet-300-100 verify study, random 99%, seed 2, eps 0.1), and with
    presolve on solves the same model to optimality. If the second run also fails, the
    caller records the status as an error, never as verified."""
    hs = m.hp.HighsModelStatus
    m.h.run()
    status = m.h.getModelStatus()
    remaining = deadline - time.perf_counter()
    if status != hs.kInfeasible or remaining <= 0:
        return status
    m.h.setOptionValue("presolve", "on")
    m.h.setOptionValue("time_limit", m.h.getRunTime() + remaining)
    try:
        m.h.run()
    finally:
        m.h.setOptionValue("presolve", "off")
    return m.h.getModelStatus()


def _decide(
    model: nn.Module, x0: torch.Tensor, y: int, eps: float, built: _Built,
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
    for j in order:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            res.status, res.detail = "timeout", f"time limit before class {j}"
            break
        row = built.logits[y] - built.logits[j]
        const = float(built.logits0[y] - built.logits0[j])
        m.set_objective(row, True)
        m.h.setOptionValue("mip_rel_gap", 0.0)
        m.h.setOptionValue("mip_abs_gap", 1e-7)
        m.h.setOptionValue("time_limit", m.h.getRunTime() + remaining)
        solve = _Solve(built, const, cex_tol, deadline)
        try:
            status = _run_checked(m, deadline)
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
            cand = _input_from(built, solve.best_sol, x0.shape).to(x0.device)
            checked = _check_counterexample(model, x0, cand, y, eps)
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
            return
        res.status = "error"
        res.detail = f"class {j}: solver status {m.h.modelStatusToString(status)}"
        return
    else:
        res.status = "verified"
        res.margin_lower = float(min(proven)) if proven else lower
        return


def _check_exact_args(norm: float | str, time_limit: float) -> None:
    if str(norm).strip().lower().removeprefix("l") not in ("inf", "infinity"):
        raise ConfigError(f"exact verification handles the l_inf norm only, got {norm!r}")
    if not (time_limit > 0):
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")


def verify_exact(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    norm: float | str = "inf",
    time_limit: float = 30.0,
    tighten: bool = False,
    lp_fraction: float = _LP_FRACTION,
    cex_tol: float = _CEX_TOL,
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
    check_metric_inputs(x)
    if not (math.isfinite(float(epsilon)) and float(epsilon) >= 0):
        raise ConfigError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    eps = float(epsilon)
    n = x.shape[0]
    ids = list(range(n)) if indices is None else [int(i) for i in indices]
    device = model_device(model)
    with eval_mode(model):
        layers = parse_network(model, x.shape[1:], device=device)
        y = _check_labels(y, n, layers[-1].out_shape[0]).to(device)
        x = x.to(device)
        return _verify_many(model, layers, x, y, eps, None, ids, time_limit=time_limit,
                            tighten=tighten, lp_fraction=lp_fraction, cex_tol=cex_tol)  # fmt: skip


def _verify_many(
    model: nn.Module, layers: list[Layer], x: torch.Tensor, y: torch.Tensor, eps: float,
    bounds: list[_PointBounds] | None, ids: Sequence[int], **kw: Any,
) -> list[ExactResult]:  # fmt: skip
    """The exact verdict per point; ``bounds``: the points' CROWN bounds when already
    computed (else one batched pass here, for the correctly classified points)."""
    n = x.shape[0]
    start = time.perf_counter()
    wrong = [_is_adversarial(model, x[i], int(y[i])) for i in range(n)]
    clean_s = (time.perf_counter() - start) / max(n, 1)
    if bounds is None:
        todo = [i for i in range(n) if not wrong[i]]
        found = _point_bounds(model, x[todo], y[todo], eps) if todo else []
        of = dict(zip(todo, found, strict=True))
    else:
        of = dict(enumerate(bounds))
    cache: list[list[_Stage]] = []

    def stages() -> list[_Stage]:
        if not cache:
            cache.append(_stages(layers))
        return cache[0]

    out: list[ExactResult] = []
    for i in range(n):
        xi = x[i]
        if wrong[i]:
            out.append(ExactResult(ids[i], eps, "counterexample", "clean", clean_s,
                                   counterexample=xi.cpu(), margin_upper=0.0,
                                   detail="misclassified"))  # fmt: skip
            continue
        out.append(_verify_one(model, xi, int(y[i]), eps, of[i], stages, index=ids[i], **kw))
        log.debug("point %d eps %g: %s", ids[i], eps, out[-1].status)
    return out


# -- minimal adversarial distance -------------------------------------------------------------


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
            if _is_adversarial(model, x, y):
                return x, float((x.double() - x0.double()).abs().max())
    return None


def _attack_radius(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: Sequence[float], seed: int
) -> torch.Tensor:
    """Per point the l_inf distance of the closest PGD adversarial over ``grid``, inf if none."""
    from sparserobust.attacks import get_attack

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
        stages = _stages(crown.layers)
        pre = {i: (lo[0].cpu().numpy(), hi[0].cpu().numpy()) for i, (lo, hi) in crown.pre.items()}
        xf = x0.double().flatten().cpu().numpy()
        lo_in, hi_in = np.clip(xf - radius, 0, 1), np.clip(xf + radius, 0, 1)
        built = _build(stages, pre, lo_in, hi_in, tighten=False, deadline=deadline,
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
    model: nn.Module, x0: torch.Tensor, y: int, built: _Built, tcol: int,
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
        m.h.setOptionValue("time_limit", m.h.getRunTime() + remaining)
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
                cand = _input_from(built, sol, x0.shape).to(x0.device)
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
        y = _check_labels(y, n, layers[-1].out_shape[0])
        if radius is None:
            radii = _attack_radius(model, x.to(device), y.to(device), attack_grid, seed)
            radii = torch.where(torch.isfinite(radii), radii, torch.tensor(max(attack_grid)))
        else:
            if not (math.isfinite(float(radius)) and float(radius) > 0):
                raise ConfigError(f"radius must be a number > 0, got {radius!r}")
            radii = torch.full((n,), float(radius), dtype=torch.float64)
        for i in range(n):
            xi, yi = x[i].to(device), int(y[i])
            if _is_adversarial(model, xi, yi):
                out.append(DistanceResult(ids[i], "exact", 0.0, 0.0, 0.0, 0.0, xi.cpu()))
                continue
            out.append(_distance_one(model, xi, yi, float(radii[i]), time_limit, tol, ids[i]))
    return out


# -- the study measurement -------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def verify_points(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilons: Sequence[float],
    norm: float | str = "inf",
    n_exact: int = 20,
    time_limit: float = 30.0,
    seed: int = 0,
    tighten: bool = False,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Certified (IBP, CROWN) and exact robust accuracy per epsilon, as a JSON-able dict.

    ``x``: ``(N, C, H, W)`` images in [0,1], ``y``: labels ``(N,)``; ``epsilons``:
    radii in [0,1] pixel space for ``norm`` (2 or inf). IBP and CROWN certify all
    N points. The first ``n_exact`` points are decided exactly (l_inf only): a
    misclassified point or a PGD adversarial (seeded by ``seed``, re-checked by
    our forward pass) is a counterexample, a CROWN-certified point is verified,
    the rest go to the MILP with ``time_limit`` seconds each.

    Per epsilon the record holds ``ibp_accuracy``/``crown_accuracy`` (fractions
    of N), mean unstable ReLUs per point under IBP and CROWN (and LP on the MILP
    points), and under ``exact``: counts per status, ``robust_accuracy``
    (verified / n_exact), its upper end ``robust_accuracy_upper`` ((n_exact -
    counterexamples) / n_exact; equal when nothing timed out), ``resolved_share``,
    the bracket on the exact subset (``crown_accuracy``, ``pgd_accuracy``),
    median and p95 of per-point seconds (all points and MILP points only), and
    per-point records.
    """
    from sparserobust.attacks import get_attack
    from sparserobust.metrics.margin import parse_metric_norm

    p = parse_metric_norm(norm)
    eps_list = [float(e) for e in epsilons]
    if not eps_list or any(not (math.isfinite(e) and e >= 0) for e in eps_list):
        raise ConfigError("epsilons must be a non-empty list of finite numbers >= 0")
    n = int(x.shape[0])
    n_ex = max(0, min(int(n_exact), n))
    if n_ex and math.isfinite(p):
        raise ConfigError("exact verification handles l_inf only: set n_exact=0 for l2")
    if not (time_limit > 0):
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")
    device = model_device(model)
    record: dict[str, Any] = {
        "norm": "inf" if math.isinf(p) else "2",
        "n_points": n,
        "n_exact": n_ex,
        "time_limit_s": time_limit,
        "lp_tightening": tighten,
        "seed": seed,
        "epsilons": [],
    }
    with eval_mode(model):
        for eps in eps_list:
            ibp = certify(model, x, y, epsilon=eps, norm=norm, method="ibp", batch_size=batch_size)
            crown = certify(model, x, y, epsilon=eps, norm=norm, method="crown",
                            batch_size=batch_size, keep_bounds=n_ex)  # fmt: skip
            entry: dict[str, Any] = {
                "epsilon": eps,
                "clean_accuracy": float(crown.clean_correct.float().mean()) if n else math.nan,
                "ibp_accuracy": ibp.accuracy,
                "crown_accuracy": crown.accuracy,
                "ibp_seconds": round(ibp.seconds, 4),
                "crown_seconds": round(crown.seconds, 4),
                "unstable_relus_ibp_mean": float(crown.unstable_relus(ibp=True).float().mean()),
                "unstable_relus_crown_mean": float(crown.unstable_relus().float().mean()),
            }
            if n_ex:
                entry["exact"] = _exact_entry(
                    model, x[:n_ex].to(device), y[:n_ex].to(device), eps, crown, time_limit,
                    seed, tighten, get_attack,
                )  # fmt: skip
            record["epsilons"].append(entry)
    return record


def _exact_entry(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, crown: Any,
    time_limit: float, seed: int, tighten: bool, get_attack: Any,
) -> dict[str, Any]:  # fmt: skip
    n = x.shape[0]
    start = time.perf_counter()
    pgd = get_attack("pgd", "inf").run(model, x, y, epsilons=[eps], seed=seed)
    attack_seconds = (time.perf_counter() - start) / max(n, 1)
    decided: dict[int, ExactResult] = {}
    for i in range(n):
        t0 = time.perf_counter()
        adv = pgd.x_adv[0, i]
        if bool(pgd.success[0, i]):
            checked = _check_counterexample(model, x[i], adv, int(y[i]), eps)
            if checked is not None:
                by = "clean" if not bool(pgd.clean_correct[i]) else "attack"
                point_s = attack_seconds + time.perf_counter() - t0
                decided[i] = ExactResult(i, eps, "counterexample", by, point_s,
                                         counterexample=checked.cpu())  # fmt: skip
    rest = [i for i in range(n) if i not in decided]
    if rest:
        # the MILPs reuse the CROWN bounds of verify_points' certify pass
        bounds = _bounds_from(crown, rest)
        layers = parse_network(model, x.shape[1:], device=x.device)
        exact = _verify_many(model, layers, x[rest], y[rest], eps, bounds, rest,
                             time_limit=time_limit, tighten=tighten, lp_fraction=_LP_FRACTION,
                             cex_tol=_CEX_TOL)  # fmt: skip
        for r in exact:
            r.seconds += attack_seconds
            decided[r.index] = r
    results = [decided[i] for i in range(n)]
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    secs = [r.seconds for r in results]
    milp_secs = [r.seconds for r in results if r.by == "milp"]
    lp = [r.unstable["lp"] for r in results if "lp" in r.unstable]
    crown_sub = crown.certified[:n]
    return {
        "n": n,
        **counts,
        "robust_accuracy": counts["verified"] / n,
        "robust_accuracy_upper": (n - counts["counterexample"]) / n,
        "resolved_share": (counts["verified"] + counts["counterexample"]) / n,
        "crown_accuracy": float(crown_sub.float().mean()),
        "pgd_accuracy": float((pgd.clean_correct & ~pgd.success[0]).float().mean()),
        "by": {b: sum(r.by == b for r in results) for b in ("clean", "attack", "crown", "milp")},
        "unstable_relus_lp_mean": float(np.mean(lp)) if lp else None,
        "seconds_median": _percentile(secs, 50),
        "seconds_p95": _percentile(secs, 95),
        "milp_seconds_median": _percentile(milp_secs, 50),
        "milp_seconds_p95": _percentile(milp_secs, 95),
        "points": [r.as_dict() for r in results],
    }
