"""IBP and CROWN: the parsed network computes the model, bounds are sound against
sampling and PGD, exact where the closed form is known, and zeros make them cheaper."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparserobust.attacks import get_attack
from sparserobust.errors import ConfigError, ModelError
from sparserobust.models import Normalize, build_model
from sparserobust.pruning.sweep import prune_model
from sparserobust.verify import (
    certified_radius,
    certify,
    forward_layers,
    network_bounds,
    parse_network,
)


def small_nets() -> list[tuple[str, nn.Sequential]]:
    """Random nets covering every op: MLP, conv + maxpool (overlapping too), padding."""
    torch.manual_seed(0)
    mlp = nn.Sequential(
        Normalize([0.3], [0.4]), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(),
        nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip
    conv = nn.Sequential(
        Normalize([0.3], [0.4]), nn.Conv2d(1, 3, 2), nn.ReLU(),
        nn.Conv2d(3, 4, 2, stride=1, padding=1), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3),
    )  # fmt: skip
    pool = nn.Sequential(
        Normalize([0.3], [0.4]), nn.Conv2d(1, 3, 2), nn.MaxPool2d(2, stride=1),
        nn.Conv2d(3, 4, 2), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    return [("mlp", mlp.eval()), ("conv", conv.eval()), ("pool", pool.eval())]


def margins_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - f_j`` at ``x`` ``(N, K)`` in float64, inf at ``j = y``."""
    with torch.no_grad():
        logits = model(x).double()
    m = logits.gather(1, y.view(-1, 1)) - logits
    return m.scatter(1, y.view(-1, 1), math.inf)


def samples_in_set(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """Random points of the l_p ball around ``x`` clipped to [0,1]: corners for l_inf."""
    if norm == "inf":
        d = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
        d = d * eps * torch.rand(x.shape[0], 1, 1, 1, generator=gen).sqrt()
    else:
        d = torch.randn(x.shape, generator=gen)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    return (x + d).clamp(0, 1)


def test_parsed_layers_compute_the_model() -> None:
    torch.manual_seed(1)
    bn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                       nn.Flatten(), nn.Linear(2 * 16 * 16, 3))  # fmt: skip
    bn[1].running_mean.uniform_(-1, 1)
    bn[1].running_var.uniform_(0.5, 2)
    models = [
        build_model("lenet300", (1, 8, 8), 10, (0.3,), (0.4,)),
        build_model("lenet5", (1, 16, 16), 10, (0.3,), (0.4,)),
        build_model("linear", (1, 8, 8), 10, (0.3,), (0.4,)),
        bn,
    ]
    for model in models:
        model.eval()
        shape = (1, 16, 16) if model in models[1::2] else (1, 8, 8)
        x = torch.rand(4, *shape)
        layers = parse_network(model, shape)
        if model is models[0]:  # Normalize folded into the first Linear layer
            assert [layer.kind for layer in layers][:2] == ["flatten", "linear"]
        with torch.no_grad():
            assert torch.allclose(forward_layers(layers, x.double()).float(), model(x), atol=1e-4)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_bounds_are_sound_on_random_nets(norm: str) -> None:
    """Every lower bound sits below the margin at 300 points of the threat set."""
    gen = torch.Generator().manual_seed(0)
    for _, net in small_nets():
        x = torch.rand(6, 1, 4, 4, generator=gen)
        y = net(x).argmax(1)
        for eps in (0.05, 0.2):
            crown = certify(net, x, y, epsilon=eps, norm=norm, method="crown")
            ibp = certify(net, x, y, epsilon=eps, norm=norm, method="ibp")
            worst = margins_at(net, x, y)
            for _ in range(300):
                worst = torch.minimum(worst, margins_at(net, samples_in_set(x, eps, norm, gen), y))
            finite = torch.isfinite(worst)
            assert bool((crown.margins[finite] <= worst[finite] + 1e-9).all())
            assert bool((ibp.margins[finite] <= worst[finite] + 1e-9).all())
            # intermediate bounds only get tighter than intervals
            assert bool((crown.unstable <= crown.unstable_ibp).all())


def test_intermediate_bounds_contain_the_activations() -> None:
    gen = torch.Generator().manual_seed(3)
    for _, net in small_nets():
        x = torch.rand(4, 1, 4, 4, generator=gen)
        b = network_bounds(net, x, epsilon=0.1, norm="inf", method="crown")
        for _ in range(100):
            h = samples_in_set(x, 0.1, "inf", gen).double()
            for i, layer in enumerate(b.layers):
                if i in b.pre:
                    lo, hi = b.pre[i]
                    assert bool((h >= lo - 1e-9).all() and (h <= hi + 1e-9).all())
                h = forward_layers([layer], h)


def test_crown_is_exact_on_the_linear_model(digits_linear: nn.Module) -> None:
    """Linear model, box not binding: min margin = m - eps ||w_y - w_j||_q exactly."""
    gen = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(20, 1, 8, 8, generator=gen)
    y = digits_linear(x).argmax(1)
    lin = digits_linear[-1]
    w = lin.weight.double() / digits_linear[0].std.double().flatten()
    diff = w[y].unsqueeze(1) - w.unsqueeze(0)  # (N, K, D)
    base = margins_at(digits_linear, x, y)
    for norm, q, eps in (("inf", 1, 0.05), ("2", 2, 0.5)):
        want = base - eps * diff.norm(p=q, dim=2)
        got = certify(digits_linear, x, y, epsilon=eps, norm=norm, method="crown").margins
        finite = torch.isfinite(want)
        assert torch.allclose(got[finite], want[finite], atol=1e-4)


def test_no_attack_breaks_a_certified_point(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:150], digits.test.y[:150]
    for norm, eps in (("inf", 0.03), ("2", 0.3)):
        crown = certify(digits_lenet300, x, y, epsilon=eps, norm=norm, method="crown")
        ibp = certify(digits_lenet300, x, y, epsilon=eps, norm=norm, method="ibp")
        assert crown.certified.sum() >= ibp.certified.sum()
        assert 0.3 < crown.accuracy < 1.0  # a test that can see both outcomes
        pgd = get_attack("pgd", norm, steps=50, restarts=2)
        res = pgd.run(digits_lenet300, x, y, epsilons=[eps], seed=0)
        broken = res.success[0]
        assert broken.any()
        assert not bool((broken & crown.certified).any())
        assert not bool((broken & ibp.certified).any())
        # the margin at the attack's end point is above the bound
        at_adv = margins_at(digits_lenet300, res.x_adv[0], y)
        finite = torch.isfinite(at_adv)
        assert bool((crown.margins[finite] <= at_adv[finite] + 1e-5).all())


def test_pruning_makes_bounds_cheaper(digits, digits_lenet300: nn.Module) -> None:
    """Exact zeros: fewer unstable ReLUs under both methods (at the same epsilon)."""
    import copy

    pruned = copy.deepcopy(digits_lenet300)
    prune_model(pruned, "magnitude", 0.9)
    pruned.eval()
    x, y = digits.test.x[:100], digits.test.y[:100]
    layers = parse_network(pruned, (1, 8, 8))
    with torch.no_grad():  # bounds read the effective (masked) weights
        assert torch.allclose(forward_layers(layers, x.double()).float(), pruned(x), atol=1e-4)
    dense = certify(digits_lenet300, x, y, epsilon=0.05, method="crown")
    sparse = certify(pruned, x, y, epsilon=0.05, method="crown")
    for ibp in (False, True):
        mean_sparse = sparse.unstable_relus(ibp=ibp).float().mean()
        assert mean_sparse < dense.unstable_relus(ibp=ibp).float().mean()


def test_certified_radius_brackets(digits, digits_lenet300: nn.Module) -> None:
    x, y = digits.test.x[:20], digits.test.y[:20]
    r = certified_radius(digits_lenet300, x, y, norm="inf", tol=1e-3, max_epsilon=0.3)
    ok = certify(digits_lenet300, x, y, epsilon=r, method="crown").certified
    correct = digits_lenet300(x).argmax(1) == y
    assert bool(ok[r > 0].all())
    above = certify(digits_lenet300, x, y, epsilon=r + 2e-3, method="crown").certified
    assert not bool(above[correct & (r < 0.3)].any())


def test_bad_inputs_raise_one_line_errors(digits_lenet300: nn.Module) -> None:
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ConfigError):
        certify(digits_lenet300, x, y, epsilon=-0.1)
    with pytest.raises(ConfigError):
        certify(digits_lenet300, x, y, epsilon=0.1, method="zonotope")
    with pytest.raises(ConfigError):
        certify(digits_lenet300, x, y, epsilon=0.1, norm="l3")
    with pytest.raises(ModelError):
        certify(nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Tanh()), x, y, epsilon=0.1)
    # a model that is not an nn.Sequential (resnet32 is bounded now: tests/verify/test_residual.py)
    with pytest.raises(ModelError, match="Conv2d at the top level") as err:
        certify(nn.Conv2d(1, 3, 8), x, y, epsilon=0.1)
    assert "\n" not in str(err.value)


def test_row_chunks_fit_the_budget_on_the_widest_tensor(monkeypatch) -> None:
    """A convolution's output is wider than its input: the rows bounded per pass must be
    sized on the widest tensor, the nonlinear layer's own input included (sizing on the
    layers before it let CROWN on LeNet-5 ask for 4 GiB per pass), and chunking changes
    no bound."""
    import sparserobust.verify.crown as cert

    model = build_model("lenet5", (1, 28, 28), 10, [0.13], [0.31]).eval()
    layers = parse_network(model, (1, 28, 28))
    pool = next(i for i, layer in enumerate(layers) if layer.kind == "maxpool")
    assert math.prod(layers[pool].in_shape) > max(
        math.prod(layer.in_shape) for layer in layers[:pool]
    )
    for i, layer in enumerate(layers):
        if layer.nonlinear:
            widest = max(math.prod(la.in_shape) for la in layers[: i + 1])
            chunk = cert._row_chunk(layers, i, 7)
            assert 2 * chunk * 7 * widest <= cert._ROW_BUDGET
            assert 2 * (chunk + 1) * 7 * widest > cert._ROW_BUDGET

    net = small_nets()[1][1]
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    whole = certify(net, x, y, epsilon=0.1, norm="inf", method="crown")
    monkeypatch.setattr(cert, "_ROW_BUDGET", 64)  # one row per pass
    small = parse_network(net, (1, 4, 4))
    assert cert._row_chunk(small, next(i for i, la in enumerate(small) if la.nonlinear), 3) == 1
    rows = certify(net, x, y, epsilon=0.1, norm="inf", method="crown")
    assert torch.allclose(whole.margins, rows.margins, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"stride": 2, "padding": 1},
        {"stride": (1, 2), "padding": (2, 0), "dilation": (2, 1)},
        {"groups": 2, "padding": 1},
    ],
)
def test_conv_rows_are_the_transposed_convolution_of_one_hot_rows(kwargs) -> None:
    """CROWN starts the rows of a convolution's output neurons from the kernel placed at
    each neuron's receptive field; that must equal the adjoint (transposed convolution) of
    a one-hot row, for every stride, padding, dilation and group layout, and the row's
    value at the input must be the neuron's value."""
    import sparserobust.verify.crown as cert

    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, (3, 2), **kwargs).double()
    # parse_network wants logits at the end: parse conv + flatten, keep the conv
    layer = parse_network(nn.Sequential(conv, nn.Flatten()), (4, 7, 6))[0]
    n = math.prod(layer.out_shape)
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(n, generator=gen)[:9] for _ in range(2)])  # (B=2, k=9)
    a, bias = cert._conv_rows(layer, idx)
    one_hot = torch.zeros(2, 9, n, dtype=torch.float64).scatter_(2, idx.unsqueeze(2), 1.0)
    ref_a, ref_bias = cert.backward_layer(
        layer, one_hot.view(2, 9, *layer.out_shape), torch.zeros(2, 9, dtype=torch.float64), None
    )
    assert torch.equal(a, ref_a)
    assert torch.equal(bias, ref_bias)
    x = torch.rand(2, 4, 7, 6, dtype=torch.float64, generator=gen)
    value = (a * x.unsqueeze(1)).flatten(2).sum(2) + bias
    assert torch.allclose(value, conv(x).flatten(1).gather(1, idx), atol=1e-12)


def test_kept_bounds_are_the_network_bounds() -> None:
    """certify(keep_bounds=k) hands the exact verifier the same layer bounds that
    network_bounds computes for the first k points, across its batches."""
    net = small_nets()[1][1]
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = net(x).argmax(1)
    res = certify(net, x, y, epsilon=0.1, method="crown", batch_size=2, keep_bounds=3)
    ref = network_bounds(net, x[:3], y[:3], epsilon=0.1, method="crown")
    assert res.pre is not None and set(res.pre) == set(ref.pre)
    for i, (lo, hi) in ref.pre.items():
        assert res.pre[i][0].shape[0] == 3
        assert torch.allclose(res.pre[i][0], lo, atol=1e-12)
        assert torch.allclose(res.pre[i][1], hi, atol=1e-12)
    assert certify(net, x, y, epsilon=0.1, method="crown").pre is None


def test_old_metrics_imports_warn_and_name_the_new_home() -> None:
    """docs/verification.md used to import the verifiers from sparserobust.metrics: that
    still works, with a DeprecationWarning, and gives the very same objects."""
    import sparserobust.measurements.verify as measurement
    import sparserobust.metrics as metrics
    import sparserobust.verify as verify

    for name in ("certify", "certified_radius", "verify_exact", "minimal_distance"):
        with pytest.warns(DeprecationWarning, match="sparserobust.verify"):
            assert getattr(metrics, name) is getattr(verify, name)
    with pytest.warns(DeprecationWarning, match="sparserobust.measurements.verify"):
        assert metrics.verify_points is measurement.verify_points
    with pytest.raises(AttributeError):
        metrics.no_such_name  # noqa: B018
