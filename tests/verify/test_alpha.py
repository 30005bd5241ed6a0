"""alpha-CROWN: never looser than CROWN, strictly tighter on trained nets, and still sound
(below the true minimal margin from pattern enumeration, and below every margin an
attack or a sample reaches)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparserobust.attacks import get_attack
from sparserobust.errors import ConfigError
from sparserobust.verify import alpha_certify, certify
from sparserobust.verify.alpha import optimize_intermediate
from sparserobust.verify.certification import bound_pass
from sparserobust.verify.network import parse_network
from sparserobust.verify.threat import InputSet
from tests.verify.oracles import CASES, problems, truth
from tests.verify.test_certify import margins_at, samples_in_set, small_nets


def test_ibp_crown_alpha_bracket_on_a_trained_net(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:48], digits.test.y[:48]
    eps = 0.06
    ibp = certify(digits_lenet300, x, y, epsilon=eps, method="ibp")
    crown = certify(digits_lenet300, x, y, epsilon=eps, method="crown")
    alpha = alpha_certify(digits_lenet300, x, y, epsilon=eps, iterations=30)
    assert alpha.method == "alpha"
    # point by point: IBP-certified => CROWN-certified => alpha-certified
    assert bool((~ibp.certified | crown.certified).all())
    assert bool((~crown.certified | alpha.certified).all())
    assert bool((alpha.margins >= crown.margins - 1e-9).all())
    fin = torch.isfinite(crown.margins)
    gain = (alpha.margins - crown.margins)[fin]
    assert float(gain.mean()) > 0.02  # the optimisation moves the bounds, not only ties
    assert int(alpha.certified.sum()) >= int(crown.certified.sum())
    # sound: below the margins at PGD's adversarials and at random corners of the ball
    pgd = get_attack("pgd", "inf", steps=40).run(digits_lenet300, x, y, epsilons=[eps], seed=0)
    reached = margins_at(digits_lenet300, pgd.x_adv[0], y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        reached = torch.minimum(
            reached, margins_at(digits_lenet300, samples_in_set(x, eps, "inf", gen), y)
        )
    ok = alpha.clean_correct
    assert bool((alpha.margins[ok] <= reached[ok] + 1e-4).all())
    assert not bool(alpha.certified[pgd.success[0]].any())


def test_alpha_is_below_the_enumerated_minimal_margin() -> None:
    tighter = 0
    for p, eps in CASES:
        net, x, y = problems()[p]
        crown = certify(net, x, y, epsilon=eps, method="crown")
        alpha = alpha_certify(net, x, y, epsilon=eps, iterations=40, lr=0.2)
        for i in range(len(y)):
            t = truth(p, i, eps)
            assert float(alpha.margins[i].min()) <= t + 1e-6, (p, eps, i)
            tighter += float(alpha.margins[i].min()) > float(crown.margins[i].min()) + 1e-6
    assert tighter > 0


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_alpha_bounds_hold_on_samples_for_every_op(norm: str) -> None:
    """Conv, padding, overlapping max-pool, l_inf and l2: no sample beats the bound."""
    gen = torch.Generator().manual_seed(3)
    for _, net in small_nets():
        x = torch.rand(6, 1, 4, 4, generator=gen)
        y = net(x).argmax(1)
        eps = 0.3 if norm == "inf" else 0.6
        alpha = alpha_certify(net, x, y, epsilon=eps, norm=norm, iterations=15)
        crown = certify(net, x, y, epsilon=eps, norm=norm, method="crown")
        assert bool((alpha.margins >= crown.margins - 1e-9).all())
        reached = torch.full_like(alpha.margins, math.inf)
        for _ in range(20):
            reached = torch.minimum(reached, margins_at(net, samples_in_set(x, eps, norm, gen), y))
        assert bool((alpha.margins <= reached + 1e-5).all())


def test_optimised_intermediate_bounds_contain_activations_and_tighten() -> None:
    net, x, y = problems()[3]
    eps = 0.2
    layers = parse_network(net, x.shape[1:])
    xd = x.double()
    et = torch.full((len(y),), eps, dtype=torch.float64)
    crown = bound_pass(layers, xd, y, et, math.inf, "crown")
    pre = optimize_intermediate(layers, crown.pre, InputSet(xd, et, math.inf), iterations=30)
    gen = torch.Generator().manual_seed(0)
    i = [j for j, la in enumerate(layers) if la.kind == "relu"][1]
    width_gain = 0.0
    for _ in range(50):
        xs = samples_in_set(x, eps, "inf", gen).double()
        z = xs.flatten(1)
        for layer in layers[:i]:
            from sparserobust.verify.ibp import interval_forward

            z = interval_forward(layer, z, z)[0]
        assert bool((z >= pre[i][0] - 1e-9).all() and (z <= pre[i][1] + 1e-9).all())
    width_gain = float(((crown.pre[i][1] - crown.pre[i][0]) - (pre[i][1] - pre[i][0])).sum())
    assert width_gain > 0
    assert bool((pre[i][0] >= crown.pre[i][0]).all() and (pre[i][1] <= crown.pre[i][1]).all())


def test_bad_arguments_raise(digits_lenet300: nn.Module, digits) -> None:
    x, y = digits.test.x[:2], digits.test.y[:2]
    with pytest.raises(ConfigError):
        alpha_certify(digits_lenet300, x, y, epsilon=0.1, iterations=-1)
    with pytest.raises(ConfigError):
        alpha_certify(digits_lenet300, x, y, epsilon=-0.1)


def _pool_layer(kernel: int, stride: int, shape: tuple[int, int, int]):
    from sparserobust.verify.network import Layer

    c, h, w = shape
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    return Layer("maxpool", "pool", shape, (c, ho, wo), kernel=(kernel, kernel),
                 stride=(stride, stride))  # fmt: skip


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 1)])
def test_pool_relaxation_is_below_the_max_pool_everywhere_in_its_box(kernel, stride) -> None:
    """``a . maxpool(z) + bias >= a_in . z + bias_in`` for every ``z`` in the box, for any
    weights (optimised, zero, or CROWN's), signs of ``a``, and overlapping windows."""
    from sparserobust.verify.alpha import initial_pool, pool_backward

    gen = torch.Generator().manual_seed(kernel)
    shape = (2, 5, 5)
    layer = _pool_layer(kernel, stride, shape)
    b, m = 3, 4
    lo = torch.randn(b, *shape, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(b, *shape, generator=gen, dtype=torch.float64) * 2
    hi[0, 0] = lo[0, 0]  # degenerate inputs (l = u)
    lo[1, 1, :2] += 5.0  # some windows with a dominant input
    hi[1, 1, :2] += 5.0
    a = torch.randn(b, m, *layer.out_shape, generator=gen, dtype=torch.float64)
    bias = torch.randn(b, m, generator=gen, dtype=torch.float64)
    lam = torch.rand(b, m, 2, kernel * kernel, layer.out_shape[1] * layer.out_shape[2],
                     generator=gen, dtype=torch.float64)  # fmt: skip
    lam[0, 0, 0] = 0.0  # all-zero weights: CROWN's choice
    start = initial_pool([layer], {0: (lo, hi)}, m)[0]
    for weights in (None, lam, start):
        a_in, b_in = pool_backward(layer, a, bias, lo, hi, weights)
        for _ in range(200):
            z = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=torch.float64)
            if _ % 2:  # corners of the box, where relaxations are tight or fail
                z = torch.where(torch.rand(lo.shape, generator=gen) < 0.5, lo, hi)
            out = torch.nn.functional.max_pool2d(z, kernel, stride)
            exact = (a * out.unsqueeze(1)).flatten(2).sum(2) + bias
            relaxed = (a_in * z.unsqueeze(1)).flatten(2).sum(2) + b_in
            assert bool((relaxed <= exact + 1e-9).all())


def test_pool_upper_chord_touches_the_max_at_both_ends_and_beats_the_constant() -> None:
    """One window of two inputs, z1 in [0, 4] (the larger upper bound), z2 in [1, 2]: the
    chord of max(z1, 2) runs from (0, 2) to (4, 4), so with a = -1 the relaxed value is
    exact at z1 = 0, z2 = 2 and at z1 = 4, and at z1 = 2 it is -(2 + 0.5 * 2) = -3 where
    CROWN's constant gives -4."""
    from sparserobust.verify.alpha import pool_backward

    layer = _pool_layer(2, 2, (1, 2, 2))
    lo = torch.tensor([[[[0.0, 1.0], [-9.0, -9.0]]]], dtype=torch.float64)
    hi = torch.tensor([[[[4.0, 2.0], [-8.0, -8.0]]]], dtype=torch.float64)
    a = -torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    a_in, b_in = pool_backward(layer, a, torch.zeros(1, 1, dtype=torch.float64), lo, hi, None)
    assert a_in.flatten().tolist() == [-0.5, 0.0, 0.0, 0.0]
    assert float(b_in) == -2.0

    def value(z1: float, z2: float) -> float:
        return float(a_in.flatten() @ torch.tensor([z1, z2, -9.0, -9.0], dtype=torch.float64)
                     + b_in)  # fmt: skip

    assert value(0.0, 2.0) == -2.0 and value(4.0, 1.5) == -4.0 and value(2.0, 1.0) == -3.0


def test_pool_weights_are_normalised_and_ignored_in_a_stable_window() -> None:
    """Positive ``a``: the bound is ``sum_k lambda_k z_k`` with ``lambda`` normalised over
    the window; a window whose input with the largest lower bound dominates is exact
    whatever the weights."""
    from sparserobust.verify.alpha import pool_backward

    layer = _pool_layer(2, 2, (1, 2, 4))
    lo = torch.tensor([[[[0.0, 1.0, 5.0, 0.0], [0.5, 0.0, 0.0, 1.0]]]], dtype=torch.float64)
    hi = torch.tensor([[[[3.0, 2.0, 6.0, 1.0], [1.0, 2.5, 1.0, 2.0]]]], dtype=torch.float64)
    a = torch.ones(1, 1, 1, 1, 2, dtype=torch.float64)
    lam = torch.tensor([2.0, 0.0, 2.0, 4.0], dtype=torch.float64)  # per window offset k
    lam = lam.view(1, 1, 1, 4, 1).expand(1, 1, 1, 4, 2)
    a_in, b_in = pool_backward(layer, a, torch.zeros(1, 1, dtype=torch.float64), lo, hi, lam)
    # window 0 (inputs 0, 1, 4, 5 of the flat 2x4): unstable, weights 2:0:2:4 / 8
    # window 1 (inputs 2, 3, 6, 7): input 2 (l = 5) dominates, all weight on it
    assert a_in.flatten().tolist() == [0.25, 0.0, 1.0, 0.0, 0.25, 0.5, 0.0, 0.0]
    assert float(b_in) == 0.0


def test_optimised_intermediate_bounds_through_max_pools_contain_activations() -> None:
    """LeNet-5's shape (conv, max-pool, fc, ReLU, fc): the ReLU's input bounds, re-bounded
    through the optimised max-pool relaxation, contain every sampled pre-activation and
    are tighter than CROWN's."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 12), nn.ReLU(),
        nn.Linear(12, 3),
    ).double()  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    eps = 0.1
    layers = parse_network(net, x.shape[1:])
    et = torch.full((4,), eps, dtype=torch.float64)
    y = net(x).argmax(1)
    crown = bound_pass(layers, x, y, et, math.inf, "crown")
    pre = optimize_intermediate(layers, crown.pre, InputSet(x, et, math.inf), iterations=30)
    i = [j for j, la in enumerate(layers) if la.kind == "relu"][0]
    lo, hi = pre[i]
    assert bool((lo >= crown.pre[i][0]).all() and (hi <= crown.pre[i][1]).all())
    assert float(((crown.pre[i][1] - crown.pre[i][0]) - (hi - lo)).sum()) > 0.01
    head = net[:4]
    for _ in range(100):
        xs = samples_in_set(x, eps, "inf", gen).double()
        with torch.no_grad():
            z = head(xs)
        assert bool((z >= lo - 1e-9).all() and (z <= hi + 1e-9).all())


def test_a_past_deadline_stops_the_optimisation_at_its_first_sound_iterate() -> None:
    """``deadline`` in the past: optimize_bounds returns its starting point's bound (not
    -inf, not an unsound value), optimize_intermediate leaves the bounds as they were."""
    from sparserobust.verify.alpha import initial_alpha, optimize_bounds, relaxed_lower
    from sparserobust.verify.certification import margin_spec

    net, x, y = problems()[3]
    eps = 0.2
    layers = parse_network(net, x.shape[1:])
    xd = x.double()
    et = torch.full((len(y),), eps, dtype=torch.float64)
    inp = InputSet(xd, et, math.inf)
    crown = bound_pass(layers, xd, y, et, math.inf, "crown")
    relus = [j for j, la in enumerate(layers) if la.kind == "relu"]
    k = layers[-1].out_shape[0]
    spec = margin_spec(y, k, torch.float64)
    alpha = initial_alpha(crown.pre, relus, k)
    start = relaxed_lower(layers, spec, torch.zeros(len(y), k, dtype=torch.float64),
                          crown.pre, inp, alpha)[0]  # fmt: skip
    with torch.enable_grad():
        stopped = optimize_bounds(layers, spec, crown.pre, inp, alpha, iterations=30,
                                  deadline=0.0)[0]  # fmt: skip
        full = optimize_bounds(layers, spec, crown.pre, inp, alpha, iterations=30)[0]
    assert torch.equal(stopped, start)
    assert bool((full > stopped + 1e-6).any())
    kept = optimize_intermediate(layers, crown.pre, inp, iterations=30, deadline=0.0)
    assert all(torch.equal(kept[i][0], crown.pre[i][0]) for i in crown.pre)
    assert all(torch.equal(kept[i][1], crown.pre[i][1]) for i in crown.pre)


def test_relaxed_lower_without_optimised_parameters_is_crown_on_every_op() -> None:
    """No alpha and no pool weights: every layer (max-pool included) takes CROWN's own
    relaxation, so the bound equals CROWN's to rounding (mutation: the max-pool's bounds
    were not handed to CROWN's relaxation unnoticed)."""
    from sparserobust.verify.alpha import relaxed_lower
    from sparserobust.verify.certification import margin_spec
    from sparserobust.verify.crown import crown_lower

    gen = torch.Generator().manual_seed(5)
    for _, net in small_nets():
        x = torch.rand(4, 1, 4, 4, generator=gen)
        y = net(x).argmax(1)
        layers = parse_network(net, x.shape[1:])
        xd = x.double()
        et = torch.full((len(y),), 0.2, dtype=torch.float64)
        inp = InputSet(xd, et, math.inf)
        pre = bound_pass(layers, xd, y, et, math.inf, "crown").pre
        spec = margin_spec(y, layers[-1].out_shape[0], torch.float64)
        zero = torch.zeros(spec.shape[:2], dtype=torch.float64)
        got, _ = relaxed_lower(layers, spec, zero, pre, inp)
        want = crown_lower(layers, len(layers) - 1, spec, zero, pre, inp)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_alpha_certify_zero_steps_is_crown_and_mixed_radii_have_no_single_epsilon(
    digits_lenet300: nn.Module, digits
) -> None:
    x, y = digits.test.x[:6], digits.test.y[:6]
    crown = certify(digits_lenet300, x, y, epsilon=0.06, method="crown")
    zero = alpha_certify(digits_lenet300, x, y, epsilon=0.06, iterations=0)
    torch.testing.assert_close(zero.margins, crown.margins)
    assert zero.epsilon == 0.06
    eps = torch.tensor([0.02, 0.06, 0.02, 0.06, 0.02, 0.06])
    mixed = alpha_certify(digits_lenet300, x, y, epsilon=eps, iterations=0)
    assert math.isnan(mixed.epsilon)
    one = alpha_certify(digits_lenet300, x[1:2], y[1:2], epsilon=0.06, iterations=0)
    torch.testing.assert_close(mixed.margins[1:2], one.margins)


def test_a_window_whose_top_lower_bound_ties_the_next_upper_bound_is_exact() -> None:
    """l* = 1 equals the other inputs' largest upper bound: the top input is the max
    everywhere in the box, so the bound passes through it whatever the weights (a tie
    counts as stable)."""
    from sparserobust.verify.alpha import pool_backward

    layer = _pool_layer(2, 2, (1, 2, 2))
    lo = torch.tensor([[[[1.0, 0.0], [-1.0, 0.5]]]], dtype=torch.float64)
    hi = torch.tensor([[[[3.0, 1.0], [0.0, 1.0]]]], dtype=torch.float64)
    a = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    lam = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64).view(1, 1, 1, 4, 1)
    a_in, b_in = pool_backward(layer, a, torch.zeros(1, 1, dtype=torch.float64), lo, hi, lam)
    assert a_in.flatten().tolist() == [1.0, 0.0, 0.0, 0.0] and float(b_in) == 0.0
