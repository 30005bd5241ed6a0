"""Exact verification: agrees with exhaustive ReLU-pattern enumeration on tiny nets,
matches the linear closed form, never reports an unchecked counterexample, never
counts a failure as verified, and brackets certified <= exact <= attacked."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import linprog
from torch import nn

import sparserobust.verify.exact as exact
import sparserobust.verify.milp as milp
from sparserobust.errors import ConfigError
from sparserobust.measurements.verify import verify_points
from sparserobust.metrics import local_bounds
from sparserobust.models import Normalize
from sparserobust.verify import (
    STATUSES,
    certified_radius,
    certify,
    minimal_distance,
    verify_exact,
)


def tiny_net(sizes: tuple[int, ...], seed: int) -> nn.Sequential:
    """A random fully connected ReLU net on inputs of shape (1, 1, sizes[0]) whose
    first-layer kinks cross the unit box, so decision boundaries lie inside it."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) * (4.0 if i == 0 else 1.0))
            if i == 0:
                centre = torch.rand(b, a, generator=gen)
                lin.bias.copy_(-(lin.weight * centre).sum(1))
            else:
                lin.bias.copy_(torch.randn(b, generator=gen) * 0.5)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def pattern_pieces(net: nn.Sequential):
    """For every ReLU on/off pattern: (constraints A x <= c, logits = L x + l)."""
    lins = [m for m in net if isinstance(m, nn.Linear)]
    ws = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in lins]
    hidden = [w.shape[0] for w, _ in ws[:-1]]
    d = ws[0][0].shape[1]
    for pattern in itertools.product((0.0, 1.0), repeat=sum(hidden)):
        a_rows, c_rows = [], []
        mx, cx = np.eye(d), np.zeros(d)
        start = 0
        for (w, b), n in zip(ws[:-1], hidden, strict=True):
            p = np.array(pattern[start : start + n])
            start += n
            zm, zc = w @ mx, w @ cx + b
            sign = np.where(p > 0, -1.0, 1.0)  # active: -z <= 0, inactive: z <= 0
            a_rows.append(sign[:, None] * zm)
            c_rows.append(-sign * zc)
            mx, cx = p[:, None] * zm, p * zc
        w, b = ws[-1]
        yield np.vstack(a_rows), np.concatenate(c_rows), w @ mx, w @ cx + b


def piece_min_margin(a, c, lm, lc, y: int, bounds) -> float:
    """min_j f_y - f_j over one linear piece (``A x <= c``, logits ``lm x + lc``) of the
    box ``bounds``, by one LP per class; inf where the piece is empty."""
    best = math.inf
    for j in range(lm.shape[0]):
        if j == y:
            continue
        res = linprog(lm[y] - lm[j], A_ub=a, b_ub=c, bounds=bounds, method="highs")
        if res.status == 0:
            best = min(best, res.fun + lc[y] - lc[j])
    return best


def enum_min_margin(net: nn.Sequential, x0: np.ndarray, y: int, eps: float) -> float:
    """min over the l_inf ball (in [0,1]) of min_j f_y - f_j, by LP per pattern."""
    bounds = [(max(v - eps, 0.0), min(v + eps, 1.0)) for v in x0]
    return min(piece_min_margin(*piece, y, bounds) for piece in pattern_pieces(net))


def enum_min_distance(net: nn.Sequential, x0: np.ndarray, y: int) -> float:
    """Smallest l_inf distance (inside [0,1]) to a point where some j scores >= y."""
    d = len(x0)
    best = math.inf
    for a, c, lm, lc in pattern_pieces(net):
        for j in range(lm.shape[0]):
            if j == y:
                continue
            rows = [np.hstack([a, np.zeros((a.shape[0], 1))])]
            rhs = [c]
            rows.append(np.hstack([lm[y] - lm[j], [0.0]])[None])  # f_y - f_j <= 0
            rhs.append(np.array([lc[j] - lc[y]]))
            rows.append(np.hstack([np.eye(d), -np.ones((d, 1))]))  # x - t <= x0
            rhs.append(x0)
            rows.append(np.hstack([-np.eye(d), -np.ones((d, 1))]))  # -x - t <= -x0
            rhs.append(-x0)
            cost = np.zeros(d + 1)
            cost[-1] = 1.0
            res = linprog(cost, A_ub=np.vstack(rows), b_ub=np.concatenate(rhs),
                          bounds=[(0, 1)] * d + [(0, None)], method="highs")  # fmt: skip
            if res.status == 0:
                best = min(best, res.fun)
    return best


def tiny_cases():
    gen = torch.Generator().manual_seed(0)
    for sizes, seed in (((2, 4, 3), 0), ((2, 3, 3, 3), 1), ((2, 6, 3), 2)):
        net = tiny_net(sizes, seed)
        x = torch.rand(6, 1, 1, 2, generator=gen)
        y = net(x).argmax(1)
        yield net, x, y


def test_milp_agrees_with_pattern_enumeration() -> None:
    by_milp: set[str] = set()
    for net, x, y in tiny_cases():
        deep = sum(isinstance(m, nn.ReLU) for m in net) > 1
        for eps, tighten in itertools.product((0.1, 0.2), (False, True) if deep else (False,)):
            # LP tightening only acts on ReLU layers after the first
            results = verify_exact(net, x, y, epsilon=eps, time_limit=10, tighten=tighten)
            for i, r in enumerate(results):
                truth = enum_min_margin(net, x[i].flatten().double().numpy(), int(y[i]), eps)
                if abs(truth) < 1e-4:
                    continue  # on the boundary: either answer is within tolerance
                if r.by == "milp":
                    by_milp.add(r.status)
                assert r.status == ("verified" if truth > 0 else "counterexample"), (truth, r)
                if r.status == "verified":
                    assert r.margin_lower is not None and r.margin_lower <= truth + 1e-6
                else:
                    xa = r.counterexample
                    assert xa is not None
                    assert float((xa - x[i]).abs().max()) <= eps + 1e-6
                    assert bool((xa >= 0).all() and (xa <= 1).all())
                    assert int(net(xa.unsqueeze(0)).argmax(1)) != int(y[i])
    # the MILP itself proved and refuted points, not only the CROWN shortcut
    assert by_milp == {"verified", "counterexample"}


def test_exact_distance_and_crown_radius_against_enumeration() -> None:
    exact_count = total = 0
    for net, x, y in tiny_cases():
        exact = minimal_distance(net, x, y, radius=0.6, time_limit=10, tol=1e-3)
        crown = certified_radius(net, x, y, norm="inf", tol=1e-4, max_epsilon=0.6)
        for i, r in enumerate(exact):
            truth = enum_min_distance(net, x[i].flatten().double().numpy(), int(y[i]))
            assert float(crown[i]) <= truth + 1e-6  # CROWN never certifies past the truth
            if math.isinf(truth) or truth > 0.6:
                assert r.status == "beyond" and r.lower == pytest.approx(0.6)
                continue
            total += 1
            assert r.lower <= truth + 1e-6  # the proven lower end is sound
            if r.status != "exact":
                # a tie point (f_j = f_y at a kink, nowhere strictly beyond) cannot be
                # confirmed by a forward pass: reported as such, never as exact
                assert r.status == "error" and "forward-pass" in r.detail
                assert r.lower == pytest.approx(truth, abs=1e-6)
                continue
            exact_count += 1
            assert r.upper is not None and truth <= r.upper + 1e-6
            assert r.upper - r.lower <= 1e-3
            assert float(crown[i]) <= r.upper
            xa = r.counterexample
            assert xa is not None and int(net(xa.unsqueeze(0)).argmax(1)) != int(y[i])
            assert float((xa - x[i]).abs().max()) == pytest.approx(r.upper, abs=1e-6)
    assert exact_count >= 0.8 * total and total >= 8


def test_exact_distance_matches_the_linear_closed_form(digits_linear: nn.Module) -> None:
    """Softmax regression, box not binding: d = min_j (f_y - f_j) / ||w_y - w_j||_1."""
    gen = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(8, 1, 8, 8, generator=gen)
    y = digits_linear(x).argmax(1)
    closed = local_bounds(digits_linear, x, y, norm="inf").ratio
    assert float(closed.max()) < 0.3  # the box cannot bind
    results = minimal_distance(digits_linear, x, y, radius=0.3, tol=1e-4)
    for r, d in zip(results, closed.tolist(), strict=True):
        assert r.status == "exact"
        assert r.lower == pytest.approx(d, abs=1e-6)
        # the upper end is a float32 counterexample: equal to the closed form up to rounding
        assert r.upper is not None and d - 1e-6 <= r.upper <= d + 1e-4


def maxpool_net(overlap: bool, seed: int) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """Conv -> max-pool -> linear, no ReLU: the max-pools are the only nonlinearity."""
    torch.manual_seed(seed)
    if overlap:  # 1x4x4 -> conv 1x3x3 -> 4 overlapping 2x2 windows
        net = nn.Sequential(nn.Conv2d(1, 1, 2), nn.MaxPool2d(2, stride=1), nn.Flatten(),
                            nn.Linear(4, 3))  # fmt: skip
        shape = (1, 4, 4)
    else:  # 1x3x3 -> conv 3x2x2 -> one 2x2 window per channel
        net = nn.Sequential(nn.Conv2d(1, 3, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 3))
        shape = (1, 3, 3)
    with torch.no_grad():
        net[0].weight.mul_(8.0)
        net[3].weight.mul_(3.0)
        net[3].bias.zero_()
    return net.eval(), shape


def maxpool_min_margin(net: nn.Sequential, shape, x0: np.ndarray, y: int, eps: float) -> float:
    """min over the l_inf ball (in [0,1]) of min_j f_y - f_j, by one LP per choice of
    the maximal input in every pooling window (all choices enumerated)."""
    fn = torch.nn.functional
    d = math.prod(shape)
    conv, pool, lin = net[0], net[1], net[3]
    cw, cb = conv.weight.detach().double(), conv.bias.detach().double()
    basis = torch.eye(d, dtype=torch.float64).view(d, *shape)
    out = fn.conv2d(basis, cw)  # the convolution without bias, one basis image per row
    zshape = out.shape[1:]
    cmat = out.flatten(1).T.numpy()  # (conv outputs, d)
    cz = cb.view(-1, 1, 1).expand(zshape).reshape(-1).numpy()
    pos = torch.arange(math.prod(zshape), dtype=torch.float64).view(zshape[0], 1, *zshape[1:])
    # window members per channel, channel-major like the pooled output
    win = fn.unfold(pos, pool.kernel_size, stride=pool.stride).round().long()
    win = win.permute(0, 2, 1).reshape(-1, win.shape[1]).numpy()  # (windows, kernel area)
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    bounds = [(max(v - eps, 0.0), min(v + eps, 1.0)) for v in x0]
    best = math.inf
    rows = np.arange(win.shape[0])
    for choice in itertools.product(range(win.shape[1]), repeat=win.shape[0]):
        top = win[rows, choice]
        # every member of a window at most its chosen max: z_m - z_top <= 0
        a_ub = np.vstack([cmat[win[r]] - cmat[top[r]] for r in rows])
        b_ub = np.concatenate([cz[top[r]] - cz[win[r]] for r in rows])
        lm, lc = w @ cmat[top], w @ cz[top] + b
        best = min(best, piece_min_margin(a_ub, b_ub, lm, lc, y, bounds))
    return best


def test_maxpool_milp_agrees_with_argmax_enumeration() -> None:
    """The max-pool MILP is exact: verified iff the minimal margin, found by enumerating
    which input is the max of every window, is positive (one binary per candidate,
    exactly one of them the max). Disjoint and overlapping windows."""
    by_milp: set[str] = set()
    for overlap, seed, epsilons in ((False, 6, (0.3, 0.5)), (True, 5, (0.15, 0.3))):
        net, shape = maxpool_net(overlap, seed)
        gen = torch.Generator().manual_seed(2)
        x = torch.rand(8, *shape, generator=gen)
        y = net(x).argmax(1)
        for eps in epsilons:
            for i, r in enumerate(verify_exact(net, x, y, epsilon=eps, time_limit=10)):
                x0 = x[i].flatten().double().numpy()
                truth = maxpool_min_margin(net, shape, x0, int(y[i]), eps)
                if abs(truth) < 1e-4:
                    continue
                if r.by == "milp":
                    by_milp.add(r.status)
                assert r.status == ("verified" if truth > 0 else "counterexample"), (truth, r)
                if r.status == "verified":
                    assert r.margin_lower is not None and r.margin_lower <= truth + 1e-6
    assert by_milp == {"verified", "counterexample"}


def test_maxpool_net_is_sound_against_crown_and_pgd() -> None:
    """Conv + overlapping max-pool: CROWN-certified => verified; verified => PGD fails."""
    from sparserobust.attacks import get_attack

    torch.manual_seed(4)
    net = nn.Sequential(
        Normalize([0.5], [0.3]), nn.Conv2d(1, 2, 2), nn.MaxPool2d(2, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 4, 4, generator=gen)
    y = net(x).argmax(1)
    eps = 0.08
    results = verify_exact(net, x, y, epsilon=eps, time_limit=10)
    crown = certify(net, x, y, epsilon=eps, method="crown").certified
    pgd = get_attack("pgd", "inf", steps=100, restarts=3).run(net, x, y, epsilons=[eps], seed=0)
    statuses = [r.status for r in results]
    assert set(statuses) <= {"verified", "counterexample"}
    assert "verified" in statuses and "counterexample" in statuses
    for i, r in enumerate(results):
        if bool(crown[i]):
            assert r.status == "verified"
        if bool(pgd.success[0, i]):
            assert r.status == "counterexample"
        if r.status == "counterexample":
            xa = r.counterexample
            assert xa is not None and float((xa - x[i]).abs().max()) <= eps + 1e-6
            assert int(net(xa.unsqueeze(0)).argmax(1)) != int(y[i])


def milp_case(status: str):
    """A tiny net, points and epsilon where the MILP itself decides some point as ``status``."""
    for net, x, y in tiny_cases():
        for eps in (0.1, 0.2, 0.3):
            results = verify_exact(net, x, y, epsilon=eps, time_limit=10)
            if any(r.status == status and r.by == "milp" for r in results):
                return net, x, y, eps, results
    raise AssertionError(f"no tiny case has a MILP-decided {status}")


def test_unconfirmed_counterexamples_are_not_reported(monkeypatch) -> None:
    """If our forward pass disagrees with the solver, the point is an error, not broken."""
    net, x, y, eps, honest = milp_case("counterexample")
    monkeypatch.setattr(exact, "is_misclassified", lambda *a, **k: False)
    for r_honest, r in zip(honest, verify_exact(net, x, y, epsilon=eps, time_limit=10),
                           strict=True):  # fmt: skip
        assert r.status != "counterexample"
        if r_honest.status == "counterexample":
            assert r.status == "error" and "forward-pass check" in r.detail


def test_solver_failure_is_a_status_never_verified(monkeypatch) -> None:
    net, x, y, eps, _ = milp_case("verified")
    real = milp._new_highs

    class Broken:
        def __init__(self) -> None:
            self._h = real()

        def __getattr__(self, name: str):
            return getattr(self._h, name)

        def getModelStatus(self):  # noqa: N802 - highspy's name
            return self._h.getModelStatus().__class__.kSolveError

    monkeypatch.setattr(milp, "_new_highs", Broken)
    results = verify_exact(net, x, y, epsilon=eps, time_limit=10)
    assert any(r.by == "milp" for r in results)
    for r in results:  # a checked counterexample stands; nothing is verified by the MILP
        assert r.by != "milp" or r.status in ("error", "counterexample")
    assert any(r.by == "milp" and r.status == "error" for r in results)

    def boom(*args, **kwargs):
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(exact, "_decide", boom)
    results = verify_exact(net, x, y, epsilon=eps, time_limit=10)
    assert all(r.status == "error" for r in results if r.by == "milp")

    monkeypatch.setattr(exact, "network_stages", boom)  # building the network's matrices fails
    results = verify_exact(net, x, y, epsilon=eps, time_limit=10)
    assert any(r.by == "milp" for r in results)
    assert all(r.status == "error" for r in results if r.by == "milp")


def test_timeout_is_reported(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:40], digits.test.y[:40]
    crown = certify(digits_lenet300, x, y, epsilon=0.08, method="crown")
    hard = [i for i in range(40) if bool(crown.clean_correct[i]) and not bool(crown.certified[i])]
    i = hard[0]
    # 10 ms: less than building the model takes (at 0.3 s HiGHS once proved this point in
    # 0.297 s, so a limit the solver can meet makes the test flaky)
    (r,) = verify_exact(digits_lenet300, x[i : i + 1], y[i : i + 1], epsilon=0.08, time_limit=0.01)
    assert r.status in ("timeout", "counterexample")
    if r.status == "timeout":  # out of time before the solver: CROWN's bound
        assert r.seconds < 5.0
        assert r.margin_lower == pytest.approx(float(crown.margins[i].min()), abs=1e-6)


def test_a_solver_timeout_bounds_the_margin_from_below(monkeypatch) -> None:
    """The solver stops at its time limit on the first class it is given: the timeout's
    ``margin_lower`` takes that class's solver bound, CROWN's for the classes after it,
    and the proven ones: at least CROWN's smallest margin, at most the enumerated minimal
    margin and 0."""
    real = exact.run_checked

    def time_limit(m, deadline):  # type: ignore[no-untyped-def]
        real(m, deadline)
        return m.hp.HighsModelStatus.kTimeLimit

    monkeypatch.setattr(exact, "run_checked", time_limit)
    above_crown = timeouts = 0
    for net, x, y in tiny_cases():
        for eps in (0.1, 0.2):
            margins = certify(net, x, y, epsilon=eps, method="crown").margins
            low = margins.min(1).values
            for i, r in enumerate(verify_exact(net, x, y, epsilon=eps, time_limit=10)):
                if r.status != "timeout":
                    continue
                timeouts += 1
                truth = enum_min_margin(net, x[i].flatten().double().numpy(), int(y[i]), eps)
                assert r.margin_lower is not None
                assert float(low[i]) - 1e-6 <= r.margin_lower <= min(truth + 1e-6, 0.0)
                # the classes after the first keep CROWN's bound
                assert r.margin_lower <= float(margins[i].sort().values[1]) + 1e-6
                above_crown += r.margin_lower > float(low[i]) + 1e-3
    assert timeouts >= 5 and above_crown >= 1


def test_a_solver_timeout_keeps_crowns_bound_for_the_classes_it_did_not_reach(
    monkeypatch,
) -> None:
    """A solver bound far above the truth on the first class (forced) cannot lift
    ``margin_lower`` above CROWN's bound of a second open class."""

    class HighDual(exact._Solve):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            self.dual = 100.0

    monkeypatch.setattr(exact, "_Solve", HighDual)
    monkeypatch.setattr(exact, "run_checked",
                        lambda m, deadline: m.hp.HighsModelStatus.kTimeLimit)  # fmt: skip
    checked = 0
    for net, x, y in tiny_cases():
        margins = certify(net, x, y, epsilon=0.2, method="crown").margins
        for i, r in enumerate(verify_exact(net, x, y, epsilon=0.2, time_limit=10)):
            second = float(margins[i].sort().values[1])
            if r.status == "timeout" and second <= 0:
                checked += 1
                assert r.margin_lower == pytest.approx(second, abs=1e-6)
    assert checked >= 1


def test_verify_points_agrees_with_enumeration() -> None:
    """verify_points hands each MILP the CROWN bounds of its own point (from its batched
    certification pass): its verdicts equal the enumerated truth, point by point."""
    by_milp: set[str] = set()
    for net, x, y in tiny_cases():
        for eps in (0.1, 0.2):
            rec = verify_points(net, x, y, epsilons=[eps], n_exact=len(y), time_limit=10)
            for p in rec["epsilons"][0]["exact"]["points"]:
                i = p["index"]
                truth = enum_min_margin(net, x[i].flatten().double().numpy(), int(y[i]), eps)
                if abs(truth) < 1e-4:
                    continue
                assert p["status"] == ("verified" if truth > 0 else "counterexample"), (truth, p)
                if p["by"] == "milp":
                    by_milp.add(p["status"])
                    assert p["unstable"]["crown"] <= p["unstable"]["ibp"]
    assert "verified" in by_milp


def test_verify_points_brackets(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:60], digits.test.y[:60]
    rec = verify_points(digits_lenet300, x, y, epsilons=[0.02, 0.05], n_exact=8, time_limit=3)
    json.dumps(rec)  # JSON-able
    for entry in rec["epsilons"]:
        assert entry["ibp_accuracy"] <= entry["crown_accuracy"]
        ex = entry["exact"]
        assert ex["n"] == 8 == sum(ex[s] for s in STATUSES)
        assert len(ex["points"]) == 8
        assert ex["crown_accuracy"] <= ex["robust_accuracy"] <= ex["robust_accuracy_upper"]
        assert ex["robust_accuracy_upper"] <= ex["pgd_accuracy"] + 1e-9
        assert entry["unstable_relus_crown_mean"] <= entry["unstable_relus_ibp_mean"]
    with pytest.raises(ConfigError):
        verify_points(digits_lenet300, x, y, epsilons=[0.5], norm="2", n_exact=2)
    with pytest.raises(ConfigError):
        verify_exact(digits_lenet300, x[:1], y[:1], epsilon=0.1, time_limit=0)


SPURIOUS_INFEASIBLE = Path(__file__).parents[1] / "data" / "highs_spurious_infeasible.mps.gz"


def _read_fixture(tmp_path: Path) -> milp.MilpModel:
    path = tmp_path / "model.mps"
    path.write_bytes(gzip.decompress(SPURIOUS_INFEASIBLE.read_bytes()))
    m = milp.MilpModel()  # presolve off, one thread, as every MILP here
    m.h.readModel(str(path))
    m.h.setOptionValue("time_limit", 60.0)
    return m


def test_spurious_infeasible_is_solved_again_with_presolve(tmp_path: Path) -> None:
    """The class-5 MILP of one point of the LeNet-300-100 verify study (random 99%,
    seed 2, eps 0.1), saved by HiGHS. It has a feasible point, the clean input, yet
    HiGHS 1.16 without presolve calls it infeasible; the verifier recorded that point
    as an error. ``run_checked`` runs it again with presolve and gets the optimum."""
    plain = _read_fixture(tmp_path)
    plain.h.run()
    hs = plain.hp.HighsModelStatus
    if plain.h.getModelStatus() != hs.kInfeasible:
        pytest.skip("this HiGHS solves the model without presolve: the retry is not exercised")
    m = _read_fixture(tmp_path)
    status = milp.run_checked(m, time.perf_counter() + 60)
    assert status == hs.kOptimal
    assert m.h.getInfo().objective_function_value == pytest.approx(2.9919538, abs=1e-5)
    presolve = m.h.getOptionValue("presolve")  # (status, value) in highspy 1.16
    presolve = presolve[-1] if isinstance(presolve, tuple) else presolve
    assert presolve == "off"  # later runs keep the cheap setting


def test_every_solve_of_one_model_gets_its_own_time_limit() -> None:
    """HiGHS measures ``time_limit`` from the start of each run but ``getRunTime`` adds up
    all runs: ``MilpModel.limit`` must give each solve the seconds it is asked for (the
    old ``getRunTime() + remaining`` let the k-th solve of a model also spend the time of
    all earlier ones). A market-split instance (Cornuejols-Dawande: 3 equality rows, 30
    binaries) that branch and bound cannot finish in 0.1 s."""
    rng = np.random.default_rng(0)
    rows, n = 3, 30
    a = rng.integers(0, 100, (rows, n)).astype(float)
    rhs = np.floor(a.sum(1) / 2)
    m = milp.MilpModel()
    m.add_cols(np.zeros(n), np.ones(n))
    m.binaries.append(np.arange(n))
    m.add_rows(sp.csr_matrix(a), rhs, rhs)
    m.make_integer()
    m.set_objective(sp.csr_matrix(np.ones((1, n))))
    for _ in range(3):
        m.limit(0.1)
        m.h.run()
        assert m.h.getModelStatus() == m.hp.HighsModelStatus.kTimeLimit
        assert m.h.getOptionValue("time_limit")[1] == 0.1
    assert m.h.getRunTime() > 0.25  # three runs of at least 0.1 s each, added up


def test_highs_reports_only_sound_dual_bounds_to_the_interrupt_callback() -> None:
    """``verify_exact`` stops a class as proven when the dual bound HiGHS hands its
    interrupt callback passes 0, so that bound must never exceed the optimum: checked on
    every CROWN-open class of the tiny nets' points, each MILP solved to optimality."""
    from sparserobust.verify.certification import bound_pass
    from sparserobust.verify.network import parse_network
    from sparserobust.verify.stages import network_stages

    seen_any = solves = 0
    for net, x, y in tiny_cases():
        for eps, i in itertools.product((0.1, 0.2), range(len(x))):
            x0, yi = x[i].double(), int(y[i])
            layers = parse_network(net, x0.shape, dtype=torch.float64)
            xd, et = x0.unsqueeze(0), torch.tensor([eps], dtype=torch.float64)
            crown = bound_pass(layers, xd, y[i : i + 1], et, math.inf, "crown")
            pre = {k: (a[0].numpy(), b[0].numpy()) for k, (a, b) in crown.pre.items()}
            lo, hi = ((xd[0] + s * eps).clamp(0, 1).flatten().numpy() for s in (-1, 1))
            built = milp.build_milp(network_stages(layers), pre, lo, hi, tighten=False,
                                    deadline=math.inf, exact_first=True)  # fmt: skip
            m = built.model
            m.make_integer()
            for j in range(int(crown.margins.shape[1])):
                if j == yi or float(crown.margins[0, j]) > 0 or not built.binaries:
                    continue
                m.set_objective(built.logits[yi] - built.logits[j], True)
                m.h.setOptionValue("mip_rel_gap", 0.0)
                m.h.setOptionValue("mip_abs_gap", 1e-9)
                duals: list[float] = []
                m.h.cbMipInterrupt.subscribe(
                    lambda e, d=duals: d.append(float(e.data_out.mip_dual_bound)))  # fmt: skip
                m.h.run()
                m.h.cbMipInterrupt.clear()
                assert m.h.getModelStatus() == m.hp.HighsModelStatus.kOptimal
                optimum = float(m.h.getInfo().objective_function_value)
                finite = [d for d in duals if math.isfinite(d)]
                seen_any += bool(finite)
                solves += 1
                assert all(d <= optimum + 1e-7 * (1 + abs(optimum)) for d in finite), (i, j)
    assert solves >= 5 and seen_any >= 3, (solves, seen_any)
