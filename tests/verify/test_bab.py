"""Branch and bound: agrees with ReLU-pattern enumeration on tiny nets and with the MILP
on trained LeNet-300-100 and LeNet-5-style nets, no attack breaks a point it verifies,
counterexamples are real, and a timeout or a failure is never verified."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparserobust.verify.bab as bab
from sparserobust.attacks import get_attack
from sparserobust.errors import ConfigError
from sparserobust.models import Normalize
from sparserobust.training import TrainSettings, train_model
from sparserobust.verify import BabSettings, verify_bab, verify_exact
from tests.conftest import kept
from tests.verify.oracles import CASES, problems, truth

# the search itself must decide: no PGD, no alpha-CROWN shortcut before branching
SEARCH_ONLY = BabSettings(pgd_steps=0, root_iterations=0, root_intermediate=0, batch_domains=4)


def check_result(net: nn.Module, x: torch.Tensor, y: int, eps: float, r) -> None:
    """A counterexample lies in the box and the ball and is misclassified; a verified
    point has a positive proven margin."""
    if r.status == "counterexample":
        xa = r.counterexample
        assert xa is not None
        assert float((xa - x).abs().max()) <= eps + 1e-6
        assert bool((xa >= 0).all() and (xa <= 1).all())
        with torch.no_grad():
            logits = net(xa.unsqueeze(0))[0]
        assert float(torch.cat([logits[:y], logits[y + 1 :]]).max()) > float(logits[y])
    if r.status == "verified":
        assert r.margin_lower is not None and r.margin_lower > 0


@pytest.mark.parametrize("tighten,branching", [(False, "babsr"), (True, "babsr"), (False, "fsb")])
def test_bab_agrees_with_pattern_enumeration(tighten: bool, branching: str) -> None:
    settings = BabSettings(
        **{**SEARCH_ONLY.__dict__, "tighten_intermediate": tighten, "branching": branching}
    )
    by_search: set[str] = set()
    for p, eps in CASES:
        net, x, y = problems()[p]
        for i, r in enumerate(verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=settings)):
            t = truth(p, i, eps)
            check_result(net, x[i], int(y[i]), eps, r)
            if abs(t) < 1e-4:
                continue  # on the boundary: either answer is within tolerance
            assert r.status == ("verified" if t > 0 else "counterexample"), (p, eps, i, t, r)
            if r.status == "verified":
                assert r.margin_lower <= t + 1e-6
            if r.by == "bab":
                by_search.add(r.status)
    # the search itself proved and refuted points, not only the CROWN shortcut
    assert by_search == {"verified", "counterexample"}


def test_fsb_splits_the_neuron_whose_weaker_child_bound_is_highest(monkeypatch) -> None:
    """With every unstable neuron a candidate, FSB's choice per domain equals the brute
    force: each neuron split alone, both children bounded, the best worse child."""
    from sparserobust.verify.alpha import relaxed_lower

    checked = []
    original = bab._Search._fsb

    def spy(self, dom, pre, coefs, spec, inp):
        layer, index = original(self, dom, pre, coefs, spec, inp)
        for d in range(dom.size):
            one = dom.take(torch.tensor([d]))
            best, choice, worsts = -math.inf, (-1, 0), {}
            for i in self.relus:
                lo, hi = pre[i][0][d].flatten(), pre[i][1][d].flatten()
                for j in ((lo < 0) & (hi > 0)).nonzero().flatten().tolist():
                    one.layer, one.index = torch.tensor([i]), torch.tensor([j])
                    kids = self.split(one)
                    kpre = self._pre(kids)
                    sg = {r: kids.sign[r].to(self.x0.dtype) for r in self.relus}
                    be = {r: kids.beta[r] * sg[r].unsqueeze(1) for r in kids.beta}
                    zero = torch.zeros(2, 1, dtype=spec.dtype)
                    two = spec[d : d + 1].repeat(2, 1, 1)
                    with torch.no_grad():
                        bnd = relaxed_lower(self.layers, two, zero, kpre, self._inp(2),
                                            kids.alpha, be)[0][:, 0]  # fmt: skip
                    worst = float(bnd.min())
                    worsts[(i, j)] = worst
                    if worst > best + 1e-9:
                        best, choice = worst, (i, j)
            if choice[0] >= 0:
                got = (int(layer[d]), int(index[d]))
                # the best worse child; a tie within rounding may go either way
                checked.append(got in worsts and worsts[got] >= best - 1e-9)
        return layer, index

    monkeypatch.setattr(bab._Search, "_fsb", spy)
    settings = BabSettings(**{**SEARCH_ONLY.__dict__, "branching": "fsb", "fsb_candidates": 10_000})
    net, x, y = problems()[1]
    verify_bab(net, x, y, epsilon=0.2, time_limit=20, settings=settings)
    assert len(checked) >= 10 and all(checked), (len(checked), sum(checked))


def test_bab_with_every_shortcut_agrees_with_enumeration() -> None:
    """Default settings (PGD, alpha-CROWN with optimised intermediate bounds first)."""
    for p, eps in CASES[3:5]:
        net, x, y = problems()[p]
        for i, r in enumerate(verify_bab(net, x, y, epsilon=eps, time_limit=20)):
            t = truth(p, i, eps)
            check_result(net, x[i], int(y[i]), eps, r)
            if abs(t) >= 1e-4:
                assert r.status == ("verified" if t > 0 else "counterexample"), (p, eps, i, t, r)


def lenet5_style(digits) -> nn.Sequential:
    """Conv 8@3x3, max-pool 2, fc 48, ReLU, fc 10 on 8x8 digits (LeNet-5's shape: the
    max-pools feed the only ReLU layer), trained 10 epochs."""

    def build() -> nn.Sequential:
        info = digits.info
        torch.manual_seed(0)
        net = nn.Sequential(
            Normalize(info.mean, info.std), nn.Conv2d(1, 8, 3), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(72, 48), nn.ReLU(), nn.Linear(48, 10),
        )  # fmt: skip
        train_model(net, digits.train, TrainSettings(epochs=10, seed=0), progress=False)
        return net.eval()

    return kept("digits_lenet5_style", build)


def agree_with_milp(net, x, y, eps, milp_limit: float) -> list:
    # generous caps: these points take each side a few seconds on a free core, and a
    # busy machine must not turn them into timeouts (the test needs 4 decided by both)
    results = verify_bab(net, x, y, epsilon=eps, time_limit=15,
                         settings=BabSettings(pgd_steps=0))  # fmt: skip
    milp = verify_exact(net, x, y, epsilon=eps, time_limit=milp_limit)
    both = 0
    for i, (r, m) in enumerate(zip(results, milp, strict=True)):
        check_result(net, x[i], int(y[i]), eps, r)
        decided = ("verified", "counterexample")
        if r.status in decided and m.status in decided:
            both += 1
            assert r.status == m.status, (i, r, m)
    assert both >= 4
    return results


def test_bab_agrees_with_the_milp_on_a_trained_lenet300(digits, digits_lenet300: nn.Module) -> None:
    # points the MILP decides within its cap at this radius, some only by branching
    idx = [10, 12, 13, 16, 1]
    x, y = digits.test.x[idx], digits.test.y[idx]
    results = agree_with_milp(digits_lenet300, x, y, 0.08, 20.0)
    assert sum(r.by == "bab" and r.status == "verified" for r in results) >= 3
    verified = [i for i, r in enumerate(results) if r.status == "verified"]
    pgd = get_attack("pgd", "inf", steps=100, restarts=3).run(
        digits_lenet300, x[verified], y[verified], epsilons=[0.08], seed=0
    )
    assert not bool(pgd.success.any())  # no attack breaks a point BaB verifies


def test_bab_agrees_with_the_milp_on_a_trained_lenet5_style_net(digits) -> None:
    net = lenet5_style(digits)
    # 9 and 28 need branching even with the optimised max-pool relaxation at the root
    idx = [*range(9), 9, 28]
    x, y = digits.test.x[idx], digits.test.y[idx]
    results = agree_with_milp(net, x, y, 0.06, 20.0)
    assert {"verified", "counterexample"} <= {r.status for r in results if r.by == "bab"}
    verified = [i for i, r in enumerate(results) if r.status == "verified"]
    pgd = get_attack("pgd", "inf", steps=100, restarts=3).run(
        net, x[verified], y[verified], epsilons=[0.06], seed=0
    )
    assert not bool(pgd.success.any())


def branched_points() -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """A tiny problem and its points that the search verifies only by branching."""
    for p, eps in CASES:
        net, x, y = problems()[p]
        results = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=SEARCH_ONLY)
        idx = [i for i, r in enumerate(results) if r.by == "bab" and r.status == "verified"]
        if idx:
            return net, x[idx], y[idx], eps
    raise AssertionError("no point needs branching")


def stop_clock(monkeypatch, stopped) -> None:  # type: ignore[no-untyped-def]
    """``bab``'s clock reads 0 until ``stopped()`` is true, then far past any deadline."""
    import types

    monkeypatch.setattr(bab, "time", types.SimpleNamespace(
        perf_counter=lambda: 1e9 if stopped() else 0.0))  # fmt: skip


def crown_min(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per point, CROWN's smallest margin bound (float64)."""
    layers = bab.parse_network(net, x.shape[1:], dtype=torch.float64)
    et = torch.full((len(x),), eps, dtype=torch.float64)
    return bab.bound_pass(layers, x.double(), y, et, math.inf, "crown").margins.min(1).values


def test_a_timeout_is_never_verified() -> None:
    """Out of time before any search: a timeout whose ``margin_lower`` is the root's
    bound, CROWN's smallest margin (how far the point is from a proof)."""
    net, x, y, eps = branched_points()
    results = verify_bab(net, x, y, epsilon=eps, time_limit=1e-4, settings=SEARCH_ONLY)
    for r, low in zip(results, crown_min(net, x, y, eps), strict=True):
        assert r.status == "timeout" and r.seconds < 5
        assert float(low) < 0 and r.margin_lower == pytest.approx(float(low), abs=1e-9)


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_a_timeout_bounds_the_margin_from_below(monkeypatch, passes: int) -> None:
    """Stopped after ``passes`` bound passes, a timeout's ``margin_lower`` (the lowest
    bound of the open domains and proven classes) lies between CROWN's root bound (a
    child keeps its parent's bound) and the enumerated minimal margin, and is <= 0."""
    count: list[int] = []
    real_bound = bab._Search.bound

    def bound(self, dom, iterations):  # type: ignore[no-untyped-def]
        count.append(1)
        return real_bound(self, dom, iterations)

    stop_clock(monkeypatch, lambda: len(count) >= passes)
    monkeypatch.setattr(bab._Search, "bound", bound)
    timeouts = 0
    for p, eps in CASES:
        net, x, y = problems()[p]
        lows = crown_min(net, x, y, eps)
        for i in range(len(x)):
            count.clear()
            (r,) = verify_bab(net, x[i : i + 1], y[i : i + 1], epsilon=eps, time_limit=10,
                              settings=SEARCH_ONLY)  # fmt: skip
            if r.status != "timeout":
                continue
            timeouts += 1
            assert r.margin_lower is not None
            assert float(lows[i]) - 1e-9 <= r.margin_lower <= min(truth(p, i, eps) + 1e-6, 0.0)
    assert timeouts >= 5


def test_a_timeout_between_leaf_lps_keeps_the_leaves_bounds(monkeypatch) -> None:
    """The clock runs out right after the first leaf LP of a round: the timeout's
    ``margin_lower`` still counts that round's domains (at most the leaf's own bound)."""
    leaves: list[float] = []
    real_leaf = bab._Search.leaf

    def leaf(self, dom, r):  # type: ignore[no-untyped-def]
        leaves.append(float(dom.bound[r]))
        return real_leaf(self, dom, r)

    stop_clock(monkeypatch, lambda: bool(leaves))
    monkeypatch.setattr(bab._Search, "leaf", leaf)
    stopped = 0
    for p, eps in CASES:
        net, x, y = problems()[p]
        for i in range(len(x)):
            leaves.clear()
            (r,) = verify_bab(net, x[i : i + 1], y[i : i + 1], epsilon=eps, time_limit=10,
                              settings=SEARCH_ONLY)  # fmt: skip
            if r.status == "timeout" and leaves:
                stopped += 1
                assert r.margin_lower is not None and r.margin_lower <= leaves[0] + 1e-12
    assert stopped >= 1


def test_a_child_keeps_its_parents_bound() -> None:
    """Root domains given a valid bound above what their relaxation proves (the margin a
    full search proved, 13 domains): the first pass keeps it, so every class is proven
    at once."""
    plain, dom = root_search()
    kept_bound, _ = root_search()
    assert plain.run(dom.take(torch.arange(dom.size))) == "verified"
    assert plain.domains_bounded == 13 and plain.lower > 0
    dom.bound = torch.full_like(dom.bound, plain.lower)
    assert kept_bound.run(dom) == "verified"
    assert kept_bound.domains_bounded == dom.size and kept_bound.lower == plain.lower


def test_a_failure_is_an_error_never_verified(monkeypatch) -> None:
    net, x, y, eps = branched_points()

    def boom(*args, **kwargs):
        raise RuntimeError("bound pass failed")

    monkeypatch.setattr(bab, "optimize_bounds", boom)
    results = verify_bab(net, x, y, epsilon=eps, time_limit=5, settings=SEARCH_ONLY)
    assert all(r.status == "error" and "bound pass failed" in r.detail for r in results)


def test_running_out_of_device_memory_is_a_timeout_never_verified(monkeypatch) -> None:
    """A search that runs out of (GPU) memory hit a resource limit, as max_domains does:
    timeout, with what it had bounded, never verified and never a crash."""
    net, x, y, eps = branched_points()

    def oom(self, dom):
        self.domains_bounded = 7
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(bab._Search, "run", oom)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    results = verify_bab(net, x, y, epsilon=eps, time_limit=5, settings=SEARCH_ONLY)
    assert results
    for r in results:
        assert r.status == "timeout" and r.margin_lower is None
        assert r.detail == "out of device memory; 7 domains bounded"


def test_settings_for_a_gpu_bound_bigger_batches_and_keep_the_changes() -> None:
    gpu = BabSettings.for_device("cuda:0", pgd_steps=0)
    assert (gpu.batch_domains, gpu.max_domains, gpu.pgd_steps) == (2048, 2_000_000, 0)
    assert BabSettings.for_device(torch.device("cuda"), batch_domains=64).batch_domains == 64
    assert BabSettings.for_device("cpu", iterations=3) == BabSettings(iterations=3)


def test_unconfirmed_leaf_points_are_errors(monkeypatch) -> None:
    """A leaf LP whose minimiser our forward pass does not confirm is an error; its
    upper margin is the LP's minimum on that leaf (as the MILP's error keeps its
    objective): negative, and no lower than the enumerated minimal margin."""
    net, x, y = problems()[0]
    eps = 0.2
    refuted = [i for i in range(len(y)) if truth(0, i, eps) < -1e-4]
    monkeypatch.setattr(bab, "check_counterexample", lambda *a, **k: None)
    results = verify_bab(net, x[refuted], y[refuted], epsilon=eps, time_limit=10,
                         settings=SEARCH_ONLY)  # fmt: skip
    assert results and all(r.status == "error" for r in results)
    for i, r in zip(refuted, results, strict=True):
        if "leaf LP point" in r.detail:
            assert r.margin_upper is not None
            assert truth(0, i, eps) - 1e-6 <= r.margin_upper < 0
    assert any("leaf LP point" in r.detail for r in results)


def test_leaf_lp_is_the_exact_minimum_of_a_fixed_pattern() -> None:
    """Tiny net, one point, every neuron's pattern fixed: the LP equals enumeration."""
    net, x, y = problems()[0]
    eps = 0.2
    from sparserobust.verify.network import parse_network

    layers = parse_network(net, x.shape[1:])
    relu = next(i for i, la in enumerate(layers) if la.kind == "relu")
    n = layers[relu].in_shape[0]
    best = math.inf
    for pattern in range(2**n):
        on = torch.tensor([(pattern >> k) & 1 for k in range(n)], dtype=torch.float64)
        lo = {relu: torch.where(on > 0, 0.0, -1.0)}
        hi = {relu: torch.where(on > 0, 1.0, 0.0)}
        for cls in range(3):
            if cls != int(y[0]):
                v, _ = bab.leaf_lp(layers, x[0].double(), eps, int(y[0]), cls, lo, hi)
                best = min(best, v)
    assert best == pytest.approx(truth(0, 0, eps), abs=1e-6)


def test_bad_arguments_raise(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:2], digits.test.y[:2]
    with pytest.raises(ConfigError, match="babsr or fsb"):
        verify_bab(digits_lenet300, x, y, epsilon=0.1, settings=BabSettings(branching="fs"))
    with pytest.raises(ConfigError):
        verify_bab(digits_lenet300, x, y, epsilon=0.1, norm="2")
    with pytest.raises(ConfigError):
        verify_bab(digits_lenet300, x, y, epsilon=0.1, time_limit=0)
    with pytest.raises(ConfigError):
        verify_bab(digits_lenet300, x, y, epsilon=0.1, settings=BabSettings(batch_domains=0))


def test_beta_reaches_the_exact_minimum_of_a_fully_split_domain() -> None:
    """With every ReLU split the relaxation is exact, so by LP duality the best beta
    bound equals the domain's exact minimum (leaf_lp): optimised beta must get close to
    it from below and never above it, and far above the bound without beta."""
    from sparserobust.verify.alpha import optimize_bounds, relu_indices
    from sparserobust.verify.certification import margin_spec
    from sparserobust.verify.network import parse_network
    from sparserobust.verify.threat import InputSet

    net, x, y = problems()[2]  # one hidden layer of 6
    eps = 0.2
    layers = parse_network(net, x.shape[1:])
    (relu,) = relu_indices(layers)
    n = len(y)
    gen = torch.Generator().manual_seed(0)
    xd = x.double()
    xs = (xd + eps * (2 * torch.rand(xd.shape, generator=gen, dtype=torch.float64) - 1)).clamp(0, 1)
    z = xs.flatten(1) @ layers[relu - 1].weight.T + layers[relu - 1].bias
    on = z >= 0  # the patterns of points in the balls: non-empty domains
    lo, hi = torch.where(on, 0.0, -1.0).double(), torch.where(on, 1.0, 0.0).double()
    cls = torch.tensor([next(c for c in range(3) if c != int(t)) for t in y])
    exact = torch.tensor([
        bab.leaf_lp(layers, xd[i], eps, int(y[i]), int(cls[i]), {relu: lo[i]}, {relu: hi[i]})[0]
        for i in range(n)
    ], dtype=torch.float64)  # fmt: skip
    pre = {relu: (lo, hi)}
    spec = margin_spec(y, 3, torch.float64)[torch.arange(n), cls].unsqueeze(1)
    inp = InputSet(xd, torch.full((n,), eps, dtype=torch.float64), math.inf)
    alpha = {relu: torch.zeros(n, 1, 6, dtype=torch.float64)}
    beta = {relu: torch.zeros(n, 1, 6, dtype=torch.float64)}
    sign = {relu: torch.where(on, 1.0, -1.0).double()}
    plain = optimize_bounds(layers, spec, pre, inp, alpha, iterations=0)[0][:, 0]
    best = optimize_bounds(layers, spec, pre, inp, alpha, beta, sign, iterations=300,
                           lr_beta=0.1)[0][:, 0]  # fmt: skip
    assert bool((best <= exact + 1e-6).all())
    assert bool((best >= exact - 0.02 * exact.abs().clamp_min(1.0)).all()), (best, exact)
    assert int((best > plain + 1e-3).sum()) >= 2  # the split constraints matter here


def test_max_pool_nets_are_sound_and_never_verified_beyond_the_relaxation() -> None:
    """Conv + max-pool + linear, no ReLU (every domain is a leaf the LP cannot take): each
    decision equals the argmax enumeration's truth, and what the relaxation cannot
    prove ends as a timeout, never verified."""
    from tests.verify.test_milp import maxpool_min_margin, maxpool_net

    net, shape = maxpool_net(False, 6)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, *shape, generator=gen)
    y = net(x).argmax(1)
    eps = 0.5  # at 0.3 the optimised max-pool relaxation proves all 8 (the truth: robust)
    statuses = set()
    for i, r in enumerate(verify_bab(net, x, y, epsilon=eps, time_limit=10, settings=SEARCH_ONLY)):
        t = maxpool_min_margin(net, shape, x[i].flatten().double().numpy(), int(y[i]), eps)
        check_result(net, x[i], int(y[i]), eps, r)
        statuses.add(r.status)
        if r.status == "verified":
            assert t > 0 and r.margin_lower <= t + 1e-6
        if r.status == "counterexample":
            assert t < 1e-6
        if r.status == "timeout":
            assert "undecided" in r.detail
            # the undecided leaves' bounds: how far from a proof, and below the truth
            assert r.margin_lower is not None and r.margin_lower <= min(t + 1e-6, 0.0)
    # robust points the max-pool relaxation cannot prove: a timeout, not a claimed proof
    assert "timeout" in statuses


def test_a_search_past_its_deadline_is_a_timeout(monkeypatch) -> None:
    """The clock passes the deadline after the first bound pass: the open search is a
    timeout, never verified."""
    net, x, y, eps = branched_points()
    passes: list[int] = []
    real_bound = bab._Search.bound

    def bound(self, dom, iterations):  # type: ignore[no-untyped-def]
        passes.append(dom.size)
        return real_bound(self, dom, iterations)

    stop_clock(monkeypatch, lambda: bool(passes))
    monkeypatch.setattr(bab._Search, "bound", bound)
    settings = BabSettings(**{**SEARCH_ONLY.__dict__, "iterations": 0})
    (r,) = verify_bab(net, x[:1], y[:1], epsilon=eps, time_limit=10, settings=settings)
    assert r.status == "timeout" and r.margin_lower is not None and r.margin_lower <= 0
    assert len(passes) == 1  # the search stopped after its first bound pass
    assert "1 domains bounded" in r.detail or "2 domains bounded" in r.detail


def multi_split_points() -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """A random 6-24-24-3 ReLU net and four points the search proves only after several
    bound passes (3 to 13 domains with SEARCH_ONLY)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, 3))  # fmt: skip
    x = torch.rand(12, 6)
    idx = [3, 5, 7, 8]
    return net, x[idx], net(x[idx]).argmax(1), 0.15


@pytest.mark.parametrize("quick", [0, 1, 100_000])
def test_the_quick_search_runs_before_the_reoptimised_bounds_and_stops_at_its_budget(
    monkeypatch, quick: int
) -> None:
    """Points only branching proves: a quick search on CROWN's intermediate bounds that
    finishes within ``quick_domains`` proves them without the intermediate optimisation
    (by ``bab``, the same search as without any root optimisation); one that runs out of
    budget hands over to the optimisation and a full search, whose domains are counted on
    top; with 0 there is no quick search."""
    net, x, y, eps = multi_split_points()
    calls: list[int] = []
    real = bab.optimize_intermediate

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    budgets: list[int | None] = []
    real_run = bab._Search.run

    def run(self, dom, budget=None, until=None):  # type: ignore[no-untyped-def]
        budgets.append(budget)
        return real_run(self, dom, budget, until)

    monkeypatch.setattr(bab, "optimize_intermediate", counted)
    monkeypatch.setattr(bab._Search, "run", run)
    # quick_iterations as the full search's: an unlimited quick search is that search
    settings = BabSettings(**{**SEARCH_ONLY.__dict__, "root_intermediate": 3,
                              "quick_domains": quick, "quick_share": 1.0,
                              "quick_iterations": SEARCH_ONLY.iterations})  # fmt: skip
    plain = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=SEARCH_ONLY)
    budgets.clear()
    got = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=settings)
    quick_runs = [b for b in budgets if b is not None]
    assert quick_runs == ([quick] * len(x) if quick else [])
    assert all(int(b.detail.split()[0]) >= 3 for b in plain)
    pgd = get_attack("pgd", "inf", steps=100, restarts=3).run(net, x, y, epsilons=[eps], seed=0)
    assert not bool(pgd.success.any())
    for r, base in zip(got, plain, strict=True):
        assert (r.status, r.by) == ("verified", "bab") and r.margin_lower > 0
        domains, base_domains = int(r.detail.split()[0]), int(base.detail.split()[0])
        if quick == 100_000:  # the same search, on CROWN's bounds
            assert domains == base_domains
            assert r.margin_lower == pytest.approx(base.margin_lower, abs=1e-9)
        if quick == 1:  # one pass of the quick search, then the full search
            assert domains > 1
    assert len(calls) == (0 if quick == 100_000 else len(x))


def root_search() -> tuple[bab._Search, bab.Domains]:
    """A fresh search and its root domains (CROWN's bounds) for the point of
    :func:`multi_split_points` that needs 13 domains without a budget."""
    net, x, y, eps = multi_split_points()
    layers = bab.parse_network(net, x.shape[1:], dtype=torch.float64)
    xd, yi = x[2:3].double(), int(y[2])
    et = torch.tensor([eps], dtype=torch.float64)
    crown = bab.bound_pass(layers, xd, y[2:3], et, math.inf, "crown")
    rows = (crown.margins[0] <= 0).nonzero().flatten()
    alpha = bab.initial_params(layers, crown.pre, len(rows))
    search = bab._Search(net, layers, xd[0], yi, eps, crown.pre, SEARCH_ONLY, 1e18,
                         crown.margins[0])  # fmt: skip
    return search, bab.root_domains(layers, crown.pre, crown.margins[0], rows, alpha, yi)


def test_a_search_with_a_budget_stops_with_domains_open() -> None:
    for budget in (1, 4, None):
        search, dom = root_search()
        status = search.run(dom, budget=budget)
        if budget is None:
            assert status == "verified" and search.domains_bounded == 13
        else:  # stops at the first check past the budget: within one batch of children
            assert status == "budget"
            assert budget <= search.domains_bounded < budget + 2 * SEARCH_ONLY.batch_domains


def test_the_pgd_pre_check_runs_once_on_all_points_and_decides_attackable_ones(
    monkeypatch,
) -> None:
    """One batched PGD attack per call (not one per point); its adversarials decide the
    attackable points (``by`` attack, re-checked, non-robust by enumeration), and each
    point's time includes its share of the attack."""
    calls: list[int] = []
    real = bab._pgd

    def spy(model, xs, ys, eps, s):  # type: ignore[no-untyped-def]
        calls.append(xs.shape[0])
        return real(model, xs, ys, eps, s)

    monkeypatch.setattr(bab, "_pgd", spy)
    attacked = 0
    for p, eps in CASES[4:6]:
        net, x, y = problems()[p]
        calls.clear()
        results = verify_bab(net, x, y, epsilon=eps, time_limit=20)
        assert calls == [len(x)]
        for i, r in enumerate(results):
            check_result(net, x[i], int(y[i]), eps, r)
            assert r.seconds > 0
            if r.by == "attack":
                attacked += 1
                assert r.status == "counterexample" and truth(p, i, eps) < 1e-4
    assert attacked >= 2
    calls.clear()
    verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=SEARCH_ONLY)
    assert calls == [len(x)]  # called, and with pgd_steps=0 it attacks nothing


def test_margin_lower_of_a_searched_point_counts_the_classes_crown_proved() -> None:
    """``margin_lower`` bounds the minimal margin over every class: no larger than the
    CROWN margins of the classes CROWN proved before the search, nor than the margin at
    any sampled input of the ball."""
    net, x, y, eps = multi_split_points()
    results = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=SEARCH_ONLY)
    layers = bab.parse_network(net, x.shape[1:], dtype=torch.float64)
    et = torch.full((len(x),), eps, dtype=torch.float64)
    crown = bab.bound_pass(layers, x.double(), y, et, math.inf, "crown").margins
    gen = torch.Generator().manual_seed(0)
    below_crown = 0
    for i, r in enumerate(results):
        assert r.status == "verified" and r.by == "bab"
        proven = crown[i][crown[i] > 0]
        assert r.margin_lower <= float(proven.min()) + 1e-9
        below_crown += r.margin_lower < float(proven.min()) - 1e-6
        noise = (torch.rand(4000, *x.shape[1:], generator=gen) * 2 - 1) * eps
        xs = (x[i] + noise).clamp(0, 1)
        with torch.no_grad():
            logits = net(xs).double()
        others = torch.cat([logits[:, : int(y[i])], logits[:, int(y[i]) + 1 :]], 1)
        assert r.margin_lower <= float((logits[:, int(y[i])] - others.max(1).values).min())
    assert below_crown == len(results)  # here the searched class is always the minimum,
    # so the search's start value is checked directly: the smallest root-proven margin
    layers_, x0 = bab.parse_network(net, x.shape[1:], dtype=torch.float64), x[0].double()
    for root, lower in (([0.5, math.inf, -1.0], 0.5), ([0.2, 0.1, math.inf], 0.1),
                        ([math.inf, -0.3, -1.0], math.inf)):  # fmt: skip
        search = bab._Search(net, layers_, x0, 0, eps, {}, SEARCH_ONLY, 1e18,
                             torch.tensor(root, dtype=torch.float64))  # fmt: skip
        assert search.lower == lower


def test_the_quick_search_bounds_with_its_own_adam_steps(monkeypatch) -> None:
    """Every bound pass of the quick search takes ``quick_iterations`` Adam steps, the
    full search's take ``iterations``; both prove the same points."""
    net, x, y, eps = multi_split_points()
    steps: list[int] = []
    real = bab.optimize_bounds

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        steps.append(kwargs["iterations"])
        return real(*args, **kwargs)

    monkeypatch.setattr(bab, "optimize_bounds", counted)
    base = {**SEARCH_ONLY.__dict__, "root_intermediate": 3, "iterations": 7}
    quick = BabSettings(**{**base, "quick_domains": 100_000, "quick_iterations": 2})
    got = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=quick)
    assert steps and set(steps) == {2}
    steps.clear()
    full = BabSettings(**{**base, "quick_domains": 0, "quick_iterations": 2})
    got_full = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=full)
    assert set(steps) == {0, 7}  # the root's alpha-CROWN (root_iterations 0), the search
    assert [r.status for r in got] == [r.status for r in got_full] == ["verified"] * len(x)
    with pytest.raises(ConfigError, match="iterations >= 0"):
        verify_bab(net, x, y, epsilon=eps, settings=BabSettings(quick_iterations=-1))


def test_a_search_out_of_budget_goes_on_from_its_open_domains_on_tighter_bounds(
    monkeypatch,
) -> None:
    """When the quick search runs out of budget, its open domains (splits kept) are
    intersected with the re-optimised intermediate bounds and the same search goes on
    (no restart from the root): the domains count both phases, and the verdicts are the
    plain search's."""
    net, x, y, eps = multi_split_points()
    rebased: list[int] = []
    real = bab._Search.rebase

    def counted(self, pre):  # type: ignore[no-untyped-def]
        open_before = self.open.size
        dom = real(self, pre)
        assert dom.size == open_before and self.open is None
        assert self.pre is pre and self.iterations == self.s.iterations
        for i in dom.lo:  # inside both the new bounds and the domain's own
            assert bool((dom.lo[i] >= pre[i][0]).all() and (dom.hi[i] <= pre[i][1]).all())
        rebased.append(self.domains_bounded)
        return dom

    monkeypatch.setattr(bab._Search, "rebase", counted)
    settings = BabSettings(**{**SEARCH_ONLY.__dict__, "root_intermediate": 3,
                              "quick_domains": 1})  # fmt: skip
    got = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=settings)
    plain = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=SEARCH_ONLY)
    assert len(rebased) == len(x)  # every point needed more than its budget
    for r, base, before in zip(got, plain, rebased, strict=True):
        assert (r.status, r.by) == (base.status, "bab") == ("verified", "bab")
        assert int(r.detail.split()[0]) > before >= 1


def test_rebase_intersects_each_open_domain_with_the_new_bounds() -> None:
    """A split neuron keeps its clamp (``l = 0`` or ``u = 0``) and every neuron gets the
    tighter of its two bounds; a domain whose bounds the new ones leave empty is closed
    at its next pass with an infinite bound, never searched."""
    net, x, y, eps = multi_split_points()
    layers = bab.parse_network(net, x.shape[1:], dtype=torch.float64)
    xd = x[:1].to(torch.float64)
    crown = bab.bound_pass(layers, xd, y[:1], torch.tensor([eps], dtype=torch.float64),
                           math.inf, "crown")  # fmt: skip
    margins = crown.margins[0]
    rows = (margins <= 0).nonzero().flatten()
    alpha = bab.initial_params(layers, crown.pre, len(rows))
    s = BabSettings(**{**SEARCH_ONLY.__dict__, "quick_iterations": 0})
    search = bab._Search(net, layers, xd[0], int(y[0]), eps, crown.pre, s,
                         math.inf, margins, 0)  # fmt: skip
    assert search.run(bab.root_domains(layers, crown.pre, margins, rows, alpha, int(y[0])),
                      budget=1) == "budget"  # fmt: skip
    opened = search.open
    assert opened is not None and bool((opened.layer >= 0).all())
    kids = search.split(opened)
    search.open = kids
    i = int(kids.layer[0])
    old = {j: (kids.lo[j].clone(), kids.hi[j].clone()) for j in kids.lo}
    # new bounds: the old ones shrunk by a quarter of their width, except one neuron
    # made stably active (so the inactive child of its split becomes empty) and one
    # whose new bounds are looser (the old ones must stay)
    new = {j: (lo + (hi - lo) / 4, hi - (hi - lo) / 4) for j, (lo, hi) in crown.pre.items()}
    j = int(kids.index[0])
    new_lo, new_hi = new[i][0].flatten(1).clone(), new[i][1].flatten(1).clone()
    new_lo[0, j], new_hi[0, j] = 0.5, 1.0
    q = (j + 1) % new_lo.shape[1]
    new_lo[0, q], new_hi[0, q] = new_lo[0, q] - 10, new_hi[0, q] + 10
    new[i] = (new_lo.view_as(new[i][0]), new_hi.view_as(new[i][1]))
    dom = search.rebase(new)
    for k in dom.lo:
        assert torch.equal(dom.lo[k], torch.maximum(old[k][0], new[k][0]))
        assert torch.equal(dom.hi[k], torch.minimum(old[k][1], new[k][1]))
    assert torch.equal(dom.lo[i].flatten(1)[:, q], old[i][0].flatten(1)[:, q])
    assert torch.equal(dom.hi[i].flatten(1)[:, q], old[i][1].flatten(1)[:, q])
    n = opened.size
    inactive = dom.hi[i].flatten(1)[n, j]  # the first domain's inactive child
    assert float(inactive) <= 0 < float(dom.lo[i].flatten(1)[n, j])  # empty: lo > hi
    search.bound(dom, 0)
    assert math.isinf(float(dom.bound[n])) and dom.bound[n] > 0


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_quick_search_stops_at_its_share_of_the_time(monkeypatch, share: float) -> None:
    """With no time (``quick_share`` 0) the quick search stops after its first pass
    (the root domains) and the search goes on from there; with all of it and no domain
    budget, it is the whole search (no hand-over)."""
    net, x, y, eps = multi_split_points()
    rebased: list[int] = []
    real = bab._Search.rebase

    def counted(self, pre):  # type: ignore[no-untyped-def]
        rebased.append(self.domains_bounded)
        return real(self, pre)

    monkeypatch.setattr(bab._Search, "rebase", counted)
    settings = BabSettings(**{**SEARCH_ONLY.__dict__, "root_intermediate": 3,
                              "quick_domains": 100_000, "quick_share": share})  # fmt: skip
    got = verify_bab(net, x, y, epsilon=eps, time_limit=20, settings=settings)
    assert [r.status for r in got] == ["verified"] * len(x)
    if share == 0.0:
        assert len(rebased) == len(x) and all(1 <= b <= 9 for b in rebased)
    else:
        assert rebased == []
    with pytest.raises(ConfigError, match="quick_share"):
        verify_bab(net, x, y, epsilon=eps, settings=BabSettings(quick_share=1.5))
