"""CLEVER scores: closed form on a linear model, ART's clever_u as a peer, seeding, sampling."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sparserobust.data import Dataset
from sparserobust.errors import ConfigError, DataError, SparseRobustError
from sparserobust.metrics import clever_scores
from sparserobust.metrics.clever import _sample_ball, reverse_weibull_location


def linear_closed_form(model: torch.nn.Module, x: torch.Tensor, q: float) -> torch.Tensor:
    """min_j (f_c - f_j) / ||(w_c - w_j) / std||_q for the digits softmax regression."""
    norm_layer, _, fc = model
    w = (fc.weight / norm_layer.std.flatten()[0]).double()  # d f / d x in pixel space
    with torch.no_grad():
        logits = model(x).double()
    c = logits.argmax(1)
    out = []
    for i in range(x.shape[0]):
        ci = int(c[i])
        diff = w[ci].unsqueeze(0) - w  # (K, d)
        gn = diff.abs().sum(1) if q == 1 else diff.norm(dim=1)
        ratio = (logits[i, ci] - logits[i]) / gn
        ratio[ci] = math.inf
        out.append(ratio.min())
    return torch.stack(out)


@pytest.mark.parametrize(("norm", "q", "radius"), [(2, 2, 5.0), ("inf", 1, 0.5)])
def test_linear_model_clever_equals_closed_form(digits: Dataset, digits_linear, norm, q, radius):
    x = digits.test.x[:6]
    expected = linear_closed_form(digits_linear, x, q)
    res = clever_scores(digits_linear, x, norm=norm, radius=radius, n_batches=5, batch_size=8)
    assert bool((expected < radius).all())  # the cap does not hide the comparison
    torch.testing.assert_close(res.scores, expected, rtol=1e-4, atol=1e-7)
    assert bool(res.weibull_fitted.all())
    # a radius below the distance caps every score at the radius
    small = clever_scores(digits_linear, x, norm=norm, radius=1e-4, n_batches=3, batch_size=4)
    torch.testing.assert_close(small.scores, torch.minimum(expected, torch.tensor(1e-4).double()))


def test_clever_agrees_with_art_clever_u(digits: Dataset, digits_lenet300):
    """Same model, images, norm, radius, nb_batches=20 x batch_size=50, 16 images
    (with 8, 5 of 8 l_inf pairs fell within 15% on one machine: two at 15.3% and 15.6%).

    Both estimates are random (ART resamples batches from one pool, we draw
    fresh batches). Over 20 images x 3 seeds x 2 norms the median relative
    difference per run was 0.7-1.1%, the worst kept pair per run 4-81%
    (docs/metrics.md). ART's unguarded Weibull fit often runs off to an
    infinite location and returns ~0 (up to half the images here): such images
    (ART < half of ours) are left out. Kept images must agree to a median of
    5%, and 3 in 4 within 15%.
    """
    from art.estimators.classification import PyTorchClassifier
    from art.metrics import clever_u

    clf = PyTorchClassifier(
        digits_lenet300,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=digits.info.input_shape,
        nb_classes=digits.info.num_classes,
        clip_values=(0.0, 1.0),
    )
    x = digits.test.x[:16]
    for norm, radius in ((2, 2.0), (np.inf, 0.3)):
        ours = clever_scores(
            digits_lenet300, x, norm=norm, radius=radius, n_batches=20, batch_size=50, seed=0
        ).scores.numpy()
        np.random.seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            art = np.array(
                [clever_u(clf, xi.numpy(), 20, 50, radius, norm, verbose=False) for xi in x]
            )
        kept = art >= 0.5 * ours
        assert kept.sum() >= 3, (norm, ours, art)
        rel = np.abs(ours[kept] - art[kept]) / art[kept]
        assert np.median(rel) <= 0.05, (norm, ours, art)
        assert np.mean(rel <= 0.15) >= 0.75, (norm, ours, art)
        assert bool((ours > 0).all()) and bool((ours <= radius).all())


def test_same_seed_identical_other_seed_differs(digits: Dataset, digits_lenet300):
    x = digits.test.x[:2]
    kw = {"norm": 2, "radius": 2.0, "n_batches": 5, "batch_size": 20}
    a = clever_scores(digits_lenet300, x, seed=3, **kw)
    b = clever_scores(digits_lenet300, x, seed=3, **kw)
    c = clever_scores(digits_lenet300, x, seed=4, **kw)
    d = clever_scores(digits_lenet300, x, seed=3, chunk_size=7, **kw)
    assert torch.equal(a.scores, b.scores)
    torch.testing.assert_close(a.lipschitz, b.lipschitz, rtol=0, atol=0, equal_nan=True)
    assert not torch.allclose(a.scores, c.scores)
    # points are drawn per batch, so the chunk size changes nothing but rounding
    torch.testing.assert_close(d.sample_max, a.sample_max, rtol=1e-5, atol=1e-6, equal_nan=True)
    known = ~torch.isnan(a.lipschitz)
    assert bool((a.lipschitz[known] >= a.sample_max[known]).all())


def test_eval_mode_restored_and_predicted_class(digits: Dataset, digits_lenet300):
    digits_lenet300.train()
    try:
        res = clever_scores(digits_lenet300, digits.test.x[:2], n_batches=3, batch_size=5)
        assert digits_lenet300.training
    finally:
        digits_lenet300.eval()
    with torch.no_grad():
        pred = digits_lenet300(digits.test.x[:2]).argmax(1)
    assert torch.equal(res.predicted, pred)
    assert bool(torch.isinf(res.class_scores[torch.arange(2), pred]).all())


@pytest.mark.parametrize("p", [2.0, math.inf])
def test_sampling_is_uniform_in_the_ball(p):
    d, n, radius = 64, 20000, 0.7
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((1, 8, 8), 0.5)
    pts = _sample_ball(x0, n, p, radius, gen, clip=False)
    delta = (pts - x0).reshape(n, -1)
    if math.isinf(p):
        assert float(delta.abs().max()) <= radius + 1e-6
        assert abs(float(delta.abs().mean()) - radius / 2) < 0.005  # uniform coordinates
    else:
        r = delta.norm(dim=1)
        assert float(r.max()) <= radius * (1 + 1e-5)
        # uniform in the ball: P(|d| <= R * 0.5**(1/d)) = 1/2
        inner = float((r <= radius * 0.5 ** (1 / d)).float().mean())
        assert abs(inner - 0.5) < 0.02
    clipped = _sample_ball(torch.full((1, 8, 8), 0.95), 100, p, radius, gen, clip=True)
    assert float(clipped.max()) <= 1.0 and float(clipped.min()) >= 0.0


def test_reverse_weibull_location_guards():
    assert reverse_weibull_location(np.full(10, 3.5)) == (3.5, True)
    assert reverse_weibull_location(np.zeros(5)) == (0.0, True)
    rng = np.random.default_rng(0)
    # batch maxima of uniform [0, 2] draws: the upper end is 2
    maxima = rng.uniform(0, 2, size=(50, 100)).max(axis=1)
    loc, fitted = reverse_weibull_location(maxima)
    assert maxima.max() <= loc <= 2.0 * maxima.max()
    assert abs(loc - 2.0) < 0.02, (loc, fitted)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"radius": 0.0}, ConfigError),
        ({"radius": -1.0}, ConfigError),
        ({"n_batches": 2}, ConfigError),
        ({"batch_size": 0}, ConfigError),
        ({"norm": "l3"}, ConfigError),
        ({"chunk_size": 0}, ConfigError),
    ],
)
def test_bad_parameters_raise(digits_linear, kwargs, error):
    with pytest.raises(error):
        clever_scores(digits_linear, torch.rand(1, 1, 8, 8), **kwargs)


def test_bad_inputs_raise(digits_linear):
    x = torch.rand(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        clever_scores(digits_linear, x)
    with pytest.raises(SparseRobustError, match=r"\[0,1\]"):
        clever_scores(digits_linear, torch.rand(2, 1, 8, 8) * 3)
