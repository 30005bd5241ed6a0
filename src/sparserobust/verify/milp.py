"""The network as a mixed-integer linear program (MIPVerify style), solved by HiGHS.

Tjeng, Xiao & Tedrake (ICLR 2019): a ReLU ``y = max(z, 0)`` with pre-activation
bounds ``l < 0 < u`` is encoded exactly with one binary ``d``::

    y >= z,  y >= 0,  y <= u d,  y <= z - l (1 - d)

and a max-pool window ``y = max_i z_i`` with one binary per input that can be
the maximum (``sum_i a_i = 1``, ``y >= z_i``, ``y <= z_i + (1 - a_i)(U - l_i)``).
Big-M constants come from the tightest bounds available: CROWN
(:mod:`sparserobust.verify.crown`), then optionally LP tightening (each
unstable neuron minimised and maximised over the LP relaxation of the layers
before it). Stable ReLUs need no binary (active: ``y = z`` substituted; inactive:
dropped), neither do neurons whose outgoing weights were all pruned, nor input
pixels no kept weight reads. The solver is HiGHS (``highspy``).

The input is an l_inf box (the ball of radius ``eps`` around ``x`` intersected with
the [0,1] box, in [0,1] pixel space). :mod:`sparserobust.verify.exact` and
:mod:`sparserobust.verify.distance` add the objectives and read the answers.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from sparserobust.errors import ConfigError
from sparserobust.verify.network import Layer, window_index
from sparserobust.verify.stages import Stage

__all__ = ["BuiltMilp", "MilpModel", "build_milp", "input_from", "run_checked"]

_BOUND_SLACK = 1e-6  # absolute widening of LP-tightened bounds against solver tolerance


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


class MilpModel:
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
        """New continuous columns with bounds ``[lower, upper]``; returns their indices."""
        n = len(lower)
        if n:
            self.h.addVars(n, np.asarray(lower, float), np.asarray(upper, float))
        idx = np.arange(self.ncols, self.ncols + n, dtype=np.int32)
        self.ncols += n
        return idx

    def add_rows(self, a: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
        """Constraints ``lower <= a @ cols <= upper`` (``a`` widened to all columns)."""
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
        """``e`` with as many columns as the model has now (the new ones zero)."""
        e = sp.csr_matrix(e)
        e.resize((e.shape[0], self.ncols))
        return e

    def set_objective(self, row: sp.csr_matrix, sense_min: bool = True) -> None:
        """Minimise (or maximise) ``row @ cols``; every other cost is zero."""
        cost = np.zeros(self.ncols)
        row = self.widen(row)
        cost[row.indices] = row.data
        self.h.changeColsCost(self.ncols, np.arange(self.ncols, dtype=np.int32), cost)
        sense = self.hp.ObjSense.kMinimize if sense_min else self.hp.ObjSense.kMaximize
        self.h.changeObjectiveSense(sense)

    def limit(self, seconds: float) -> None:
        """Cap the next ``run`` at ``seconds``. HiGHS (1.16) measures its ``time_limit``
        from the start of each run while ``getRunTime`` adds up every run of the model, so
        a limit of ``getRunTime() + seconds`` let the k-th solve of one model run for the
        time of all earlier ones too (measured: 0.5 s asked, 20 s taken by the 6th solve)."""
        self.h.setOptionValue("time_limit", max(float(seconds), 0.0))

    def make_integer(self) -> None:
        """Declare the binary columns (``binaries``) integer: the LP becomes the MILP."""
        if not self.binaries:
            return
        idx = np.concatenate(self.binaries).astype(np.int32)
        kinds = np.array([self.hp.HighsVarType.kInteger] * len(idx))
        self.h.changeColsIntegrality(len(idx), idx, kinds)


def _lp_tighten(
    m: MilpModel, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
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
            m.limit(remaining)
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


def _next_reads(stages: Sequence[Stage], k: int, n: int) -> np.ndarray:
    """Bool ``(n,)``: outputs of stage ``k`` that the next affine stage reads (a nonzero column)."""
    for s in stages[k + 1 :]:
        if s.kind == "affine" and s.matrix is not None:
            return np.asarray(s.matrix.getnnz(axis=0) > 0).reshape(-1)
        if s.kind != "affine":
            break
    return np.ones(n, dtype=bool)


@dataclass
class BuiltMilp:
    """The MILP of one point: the model, the logits as ``logits @ cols + logits0``, the
    free input pixels (columns ``input_cols`` at the flat positions ``input_index``; the
    rest of the input is ``x_fixed``), the unstable ReLUs after LP tightening
    (``unstable_lp``), whether the tightening finished (``lp_complete``), and the number
    of binary columns."""

    model: MilpModel
    logits: sp.csr_matrix
    logits0: np.ndarray
    input_cols: np.ndarray
    input_index: np.ndarray
    x_fixed: np.ndarray
    unstable_lp: int
    lp_complete: bool
    binaries: int


def build_milp(
    stages: Sequence[Stage],
    pre: dict[int, tuple[np.ndarray, np.ndarray]],
    lo_in: np.ndarray,
    hi_in: np.ndarray,
    *,
    tighten: bool,
    deadline: float,
    exact_first: bool,
    lp_deadline: float | None = None,
) -> BuiltMilp:
    """The MILP of the network over the input box ``[lo_in, hi_in]`` (flat, float64)."""
    m = MilpModel()
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
    return BuiltMilp(m, m.widen(e), e0, cols, input_index, lo_in.copy(), unstable_lp, lp_complete,
                  sum(len(b) for b in m.binaries))  # fmt: skip


def _materialise(
    m: MilpModel, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
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
    idx = window_index(layer, torch.device("cpu")).numpy()  # (K, L)
    out = np.zeros(c * h * w, dtype=bool)
    used = used.reshape(c, -1)
    for ch in range(c):
        out[ch * h * w + idx[:, used[ch]].reshape(-1)] = True
    return out


def _relu_constraints(
    m: MilpModel, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
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
    m: MilpModel, e: sp.csr_matrix, e0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    layer: Layer, used: np.ndarray,
) -> tuple[sp.csr_matrix, np.ndarray]:  # fmt: skip
    """Max-pool outputs as expressions over the columns, all windows at once.

    Per window read by the next layer: the inputs that can be the max (upper bound >=
    the largest lower bound) are its candidates. One candidate: the output is that
    input. Several: a column ``y`` in ``[max l, max u]`` with ``y >= z_i``, a binary
    ``a_i`` per candidate with ``y <= z_i + (max u - l_i)(1 - a_i)`` and ``sum a_i = 1``.
    """
    c, h, w = layer.in_shape
    idx = window_index(layer, torch.device("cpu")).numpy()  # (K, L)
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


def input_from(built: BuiltMilp, sol: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """The input image (float64, ``shape``) of a solver solution ``sol`` over all columns."""
    x = built.x_fixed.copy()
    x[built.input_index] = sol[built.input_cols]
    return torch.from_numpy(x).view(*shape)


def run_checked(m: MilpModel, deadline: float) -> Any:
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
    m.limit(remaining)
    try:
        m.h.run()
    finally:
        m.h.setOptionValue("presolve", "off")
    return m.h.getModelStatus()
