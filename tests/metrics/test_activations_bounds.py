"""Active-ReLU fractions (hand-counted) and local margin bounds (linear closed form)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparserobust.data import Dataset
from sparserobust.errors import ConfigError, DataError
from sparserobust.metrics import active_relu_fraction, local_bounds
from sparserobust.utils import predict


def tiny_relu_net() -> nn.Sequential:
    """2 -> 3 -> ReLU -> 2 -> ReLU with hand-set weights (see the counts below)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -1.5]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.1]))
    return net


# layer 1 pre-activations: [-.6,.6,-.5], [.8,-.8,-.5], [0,0,.5], [0,0,-.5] -> 3 of 12 active
# layer 2 pre-activations: [.6,.1], [.8,-.7], [.5,.1], [0,.1] -> 6 of 8 active
TINY_X = torch.tensor([[0.2, 0.8], [0.9, 0.1], [1.0, 1.0], [0.5, 0.5]])


@pytest.mark.parametrize("batch_size", [1000, 3])
def test_active_relu_fraction_matches_hand_count(batch_size):
    net = tiny_relu_net().train()
    res = active_relu_fraction(net, TINY_X, batch_size=batch_size)
    assert net.training  # mode restored
    assert res.has_relu and res.message is None
    assert res.layers == {"1": pytest.approx(3 / 12), "3": pytest.approx(6 / 8)}
    assert res.units == {"1": 3, "3": 2}
    assert res.overall == pytest.approx(9 / 20)
    assert res.dead == {"1": 0.0, "3": 0.0}
    assert res.n_inputs == 4
    # only the last input: layer 1 all dead (pre-activations 0, 0, -.5), layer 2 unit 2 alive
    last = active_relu_fraction(net, TINY_X[3:])
    assert last.dead == {"1": 1.0, "3": 0.5}
    assert last.summary()["active_overall"] == pytest.approx(1 / 5)


def test_active_relu_fraction_without_relu_modules(digits: Dataset, digits_linear):
    res = active_relu_fraction(digits_linear, digits.test.x[:10])
    assert not res.has_relu
    assert math.isnan(res.overall) and res.layers == {}
    assert "no nn.ReLU" in (res.message or "")


def test_active_relu_fraction_lenet_layers(digits: Dataset, digits_lenet300):
    res = active_relu_fraction(digits_lenet300, digits.test.x[:50])
    assert res.units == {"3": 300, "5": 100}
    # overall is the unit-weighted mean of the layer fractions
    expected = (300 * res.layers["3"] + 100 * res.layers["5"]) / 400
    assert res.overall == pytest.approx(expected)
    assert 0.0 < res.overall < 1.0


def linear_terms(model: nn.Module, x: torch.Tensor, q: float):
    """Closed-form ratio and the per-class gradient of the digits softmax regression."""
    norm_layer, _, fc = model
    w = (fc.weight / norm_layer.std.flatten()[0]).double()
    with torch.no_grad():
        logits = model(x).double()
    ratios, dirs = [], []
    for i in range(x.shape[0]):
        c = int(logits[i].argmax())
        diff = w[c].unsqueeze(0) - w
        gn = diff.abs().sum(1) if q == 1 else diff.norm(dim=1)
        r = (logits[i, c] - logits[i]) / gn
        r[c] = math.inf
        j = int(r.argmin())
        ratios.append(r[j])
        dirs.append(diff[j].sign() if q == 1 else diff[j] / diff[j].norm())
    return torch.stack(ratios), torch.stack(dirs)


@pytest.mark.parametrize(("norm", "q"), [(2, 2.0), ("inf", 1.0)])
def test_linear_ratio_is_the_exact_boundary_distance(digits: Dataset, digits_linear, norm, q):
    x, y = digits.test.x[:60], digits.test.y[:60]
    res = local_bounds(digits_linear, x, y, norm=norm, batch_size=16)
    correct = torch.nonzero(predict(digits_linear, x) == y).flatten()
    assert torch.equal(res.indices, correct) and res.indices.numel() >= 50
    ratio, direction = linear_terms(digits_linear, x[correct], q)
    torch.testing.assert_close(res.ratio, ratio, rtol=1e-4, atol=1e-7)
    # stepping just short of / just past the ratio along the optimal direction
    # keeps / flips the class (no box: the linear model is defined everywhere)
    step = direction.float().view_as(x[correct])
    for factor, keeps in ((0.999, True), (1.001, False)):
        moved = x[correct] - (factor * res.ratio.float()).view(-1, 1, 1, 1) * step
        same = predict(digits_linear, moved) == y[correct]
        assert bool(same.all()) if keeps else not bool(same.any())
    # runner-up margin is top-1 minus top-2 logit
    with torch.no_grad():
        top2 = digits_linear(x[correct]).double().topk(2, dim=1).values
    torch.testing.assert_close(res.margin, top2[:, 0] - top2[:, 1], rtol=1e-5, atol=1e-5)
    s = res.summary()
    assert s["ratio_median"] == pytest.approx(float(res.ratio.median()))
    assert s["n_correct"] == res.indices.numel()


def test_local_bounds_lenet_gradient_matches_autograd(digits: Dataset, digits_lenet300):
    x, y = digits.test.x[:8], digits.test.y[:8]
    digits_lenet300.train()
    try:
        res = local_bounds(digits_lenet300, x, y, norm=2)
        assert digits_lenet300.training
    finally:
        digits_lenet300.eval()
    i = 0
    k = int(res.indices[i])
    c, j = int(res.labels[i]), int(res.runner_up[i])
    xi = x[k : k + 1].clone().requires_grad_(True)
    out = digits_lenet300(xi)
    (g,) = torch.autograd.grad(out[0, c] - out[0, j], xi)
    assert float(res.grad_norm[i]) == pytest.approx(float(g.norm()), rel=1e-4)
    assert float(res.margin[i]) == pytest.approx(float((out[0, c] - out[0, j]).detach()), rel=1e-4)
    per_class = (res.margins / res.grad_norms).nan_to_num(nan=math.inf)
    torch.testing.assert_close(res.ratio, per_class.min(dim=1).values)
    assert bool((res.ratio <= res.margin / res.grad_norm).all())


def test_local_bounds_bad_inputs(digits_linear):
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(DataError):
        local_bounds(digits_linear, x, torch.tensor([0, 1]))
    with pytest.raises(DataError):
        local_bounds(digits_linear, x, torch.tensor([0, 1, 10]))
    with pytest.raises(DataError):
        local_bounds(digits_linear, x - 0.5, torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError):
        local_bounds(digits_linear, x, torch.tensor([0, 1, 2]), norm=1)
    with pytest.raises(ConfigError):
        active_relu_fraction(digits_linear, x, batch_size=0)
