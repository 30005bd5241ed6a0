"""Exact answers for tiny ReLU nets, independent of the verifiers under test: the minimal
margin over an l_inf ball by enumerating the ReLU patterns the ball can reach (one LP per
pattern and class), and tiny nets whose decision boundaries cross the ball."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from tests.verify.test_milp import piece_min_margin, tiny_net


def _layers(net: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    lins = [m for m in net if isinstance(m, nn.Linear)]
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in lins]


def reachable_min_margin(net: nn.Sequential, x0: np.ndarray, y: int, eps: float) -> float:
    """min over the l_inf ball (in [0,1]) of ``min_j f_y - f_j``: every ReLU that numpy
    interval arithmetic leaves undecided in the ball is tried on and off, the rest keep
    their sign (so only patterns the ball can reach are enumerated), one LP per pattern
    and class."""
    ws = _layers(net)
    lo, hi = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    fixed: list[np.ndarray] = []
    for w, b in ws[:-1]:
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        zl, zu = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        fixed.append(np.where(zl >= 0, 1.0, np.where(zu <= 0, 0.0, np.nan)))
        lo, hi = np.maximum(zl, 0), np.maximum(zu, 0)
    flat = np.concatenate(fixed)
    free = np.flatnonzero(np.isnan(flat))
    d = len(x0)
    bounds = [(max(v - eps, 0.0), min(v + eps, 1.0)) for v in x0]
    best = math.inf
    for bits in itertools.product((0.0, 1.0), repeat=len(free)):
        pattern = flat.copy()
        pattern[free] = bits
        a_rows, c_rows = [], []
        mx, cx = np.eye(d), np.zeros(d)
        start = 0
        for w, b in ws[:-1]:
            p = pattern[start : start + w.shape[0]]
            start += w.shape[0]
            zm, zc = w @ mx, w @ cx + b
            sign = np.where(p > 0, -1.0, 1.0)
            a_rows.append(sign[:, None] * zm)
            c_rows.append(-sign * zc)
            mx, cx = p[:, None] * zm, p * zc
        w, b = ws[-1]
        piece = (np.vstack(a_rows), np.concatenate(c_rows), w @ mx, w @ cx + b)
        best = min(best, piece_min_margin(*piece, y, bounds))
    return best


def tiny_problems() -> list[tuple[nn.Sequential, torch.Tensor, torch.Tensor]]:
    """Random 2-input nets (one and two hidden layers, up to 9 ReLUs), 6 points each."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for sizes, seed in (((2, 4, 3), 0), ((2, 3, 3, 3), 1), ((2, 6, 3), 2), ((2, 5, 4, 3), 3)):
        net = tiny_net(sizes, seed)
        x = torch.rand(6, 1, 1, 2, generator=gen)
        out.append((net, x, net(x).argmax(1)))
    return out


_PROBLEMS: list[tuple[nn.Sequential, torch.Tensor, torch.Tensor]] = []
_TRUTH: dict[tuple[int, int, float], float] = {}


def problems() -> list[tuple[nn.Sequential, torch.Tensor, torch.Tensor]]:
    """:func:`tiny_problems`, built once per session."""
    if not _PROBLEMS:
        _PROBLEMS.extend(tiny_problems())
    return _PROBLEMS


def truth(problem: int, i: int, eps: float) -> float:
    """:func:`reachable_min_margin` of point ``i`` of problem ``problem``, cached."""
    key = (problem, i, eps)
    if key not in _TRUTH:
        net, x, y = problems()[problem]
        _TRUTH[key] = reachable_min_margin(net, x[i].flatten().double().numpy(), int(y[i]), eps)
    return _TRUTH[key]


# (problem, eps) pairs the tests decide: every net at 0.1, the smaller three at 0.2 too
CASES = ((0, 0.1), (1, 0.1), (2, 0.1), (3, 0.1), (0, 0.2), (1, 0.2), (2, 0.2))
