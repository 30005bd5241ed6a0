"""Residual blocks, average pooling and eval-mode BatchNorm in the bounds (issue 28, req 4).

The oracles are independent of the verifiers: the exact minimum margin of tiny residual
nets by enumerating their ReLU patterns (one LP per pattern and class, numpy only), and
a PGD attack on the margins written here; every lower bound must lie below both.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from sparserobust.data import Dataset
from sparserobust.errors import ModelError
from sparserobust.models import Normalize, Residual
from sparserobust.models.resnet import BasicBlock, resnet32
from sparserobust.models.vgg import vgg
from sparserobust.training import TrainSettings, train_model
from sparserobust.verify import certify, forward_layers, parse_network, verify_bab
from sparserobust.verify.alpha import alpha_certify
from sparserobust.verify.exact import verify_exact
from tests.verify.test_milp import piece_min_margin

TOL = 1e-7

# --- the enumeration oracle -------------------------------------------------------------

Ops = list[tuple]


def _ops(module: nn.Module) -> Ops:
    """The net as ("lin", W, b) / ("relu",) / ("res", branch, shortcut) in float64."""
    if isinstance(module, nn.Sequential):
        return [op for child in module for op in _ops(child)]
    if isinstance(module, nn.Linear):
        return [("lin", module.weight.detach().double().numpy(),
                 module.bias.detach().double().numpy())]  # fmt: skip
    if isinstance(module, nn.ReLU):
        return [("relu",)]
    if isinstance(module, nn.Identity):
        return []
    assert isinstance(module, Residual)
    return [("res", _ops(module.branch), _ops(module.shortcut))]


def _intervals(ops: Ops, lo: np.ndarray, hi: np.ndarray, fixed: list) -> tuple:
    """Interval arithmetic through ``ops``; appends each ReLU's sign (1, 0, nan: both)."""
    for op in ops:
        if op[0] == "lin":
            w, b = op[1], op[2]
            mid, rad = (lo + hi) / 2, (hi - lo) / 2
            lo, hi = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        elif op[0] == "relu":
            fixed.append(np.where(lo >= 0, 1.0, np.where(hi <= 0, 0.0, np.nan)))
            lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
        else:
            blo, bhi = _intervals(op[1], lo, hi, fixed)
            slo, shi = _intervals(op[2], lo, hi, fixed)
            lo, hi = blo + slo, bhi + shi
    return lo, hi


def _piece(ops: Ops, m: np.ndarray, c: np.ndarray, bits: list, rows: list) -> tuple:
    """The affine map ``(m, c)`` of ``x`` after ``ops`` under the ReLU pattern ``bits``
    (consumed in order); ``rows`` gets the pattern's constraints ``A x <= b``."""
    for op in ops:
        if op[0] == "lin":
            m, c = op[1] @ m, op[1] @ c + op[2]
        elif op[0] == "relu":
            p = np.array([bits.pop(0) for _ in range(len(c))])
            sign = np.where(p > 0, -1.0, 1.0)  # active: -z <= 0, inactive: z <= 0
            rows.append((sign[:, None] * m, -sign * c))
            m, c = p[:, None] * m, p * c
        else:
            mb, cb = _piece(op[1], m, c, bits, rows)
            ms, cs = _piece(op[2], m, c, bits, rows)
            m, c = mb + ms, cb + cs
    return m, c


def enum_min_margin(net: nn.Module, x0: np.ndarray, y: int, eps: float) -> float:
    """min over the l_inf ball (in [0,1]) of ``min_j f_y - f_j``: every ReLU pattern that
    interval arithmetic leaves possible, one LP per pattern and class."""
    ops = _ops(net)
    lo, hi = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    fixed: list = []
    _intervals(ops, lo, hi, fixed)
    flat = np.concatenate(fixed)
    free = np.flatnonzero(np.isnan(flat))
    assert len(free) <= 12, "too many patterns for the oracle"
    d = len(x0)
    bounds = list(zip(lo.tolist(), hi.tolist(), strict=True))
    best = math.inf
    for choice in itertools.product((0.0, 1.0), repeat=len(free)):
        pattern = flat.copy()
        pattern[free] = choice
        rows: list = []
        m, c = _piece(ops, np.eye(d), np.zeros(d), pattern.tolist(), rows)
        a = np.vstack([r[0] for r in rows])
        b = np.concatenate([r[1] for r in rows])
        best = min(best, piece_min_margin(a, b, m, c, y, bounds))
    return best


def tiny_residual_net(seed: int, width: int = 3, blocks: int = 1, shortcut: bool = False):
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Linear(2, width), nn.ReLU()]
    for _ in range(blocks):
        branch = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        mods += [Residual(branch, nn.Linear(width, width) if shortcut else None), nn.ReLU()]
    mods.append(nn.Linear(width, 3))
    return nn.Sequential(*mods).double().eval()


# --- the attack oracle -------------------------------------------------------------------


def pgd_margins(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
    random_start: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Per point and class ``j``, the smallest ``f_y - f_j`` PGD finds in the l_inf ball
    (one signed-gradient descent per class from the centre and, with ``random_start``,
    a random start); ``inf`` at ``j = y``. An upper bound of the true minimum margin."""
    x = x.double()
    model = model.double()
    k = model(x[:1]).shape[1]
    out = torch.full((x.shape[0], k), math.inf, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    rows = torch.arange(x.shape[0])
    for j in range(k):
        rand = lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=x.dtype)
        for start in (x, rand) if random_start else (x,):
            xa = start.clone()
            for _ in range(steps + 1):
                xa.requires_grad_(True)
                logits = model(xa)
                margin = logits[rows, y] - logits[:, j]
                out[:, j] = torch.minimum(out[:, j], margin.detach())
                (grad,) = torch.autograd.grad(margin.sum(), xa)
                xa = torch.minimum(torch.maximum(xa.detach() - eps / 8 * grad.sign(), lo), hi)
    out[rows, y] = math.inf
    return out


def check_order(ibp: torch.Tensor, crown: torch.Tensor, upper: torch.Tensor, what: str) -> None:
    fin = torch.isfinite(upper)
    assert bool((ibp[fin] <= crown[fin] + TOL).all()), f"{what}: IBP above CROWN"
    assert bool((crown[fin] <= upper[fin] + TOL).all()), f"{what}: CROWN above the oracle"


# --- parsing -----------------------------------------------------------------------------


def _calibrated(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics of random inputs (so the random
    weights give activations of a sane size)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(64, *shape, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def conv_residual_net() -> nn.Module:
    """Conv residual net on 1x8x8: BatchNorm after padded convs, option-A and conv+BN
    shortcuts, average pooling with padding, adaptive average pooling."""
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize([0.5], [0.3]),
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        BasicBlock(4, 6, stride=2),  # 6x4x4, option-A shortcut
        Residual(nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                 nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4))),
        nn.ReLU(),
        nn.AvgPool2d(3, stride=1, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 10),
    )  # fmt: skip


def test_parsed_residual_layers_compute_the_model() -> None:
    nets = [
        (tiny_residual_net(0, blocks=2, shortcut=True).float(), (2,)),
        (_calibrated(conv_residual_net(), (1, 8, 8)), (1, 8, 8)),
        (_calibrated(resnet32((3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3), (3, 8, 8)), (3, 8, 8)),
        (_calibrated(vgg((3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3), (3, 8, 8)), (3, 8, 8)),
    ]
    for model, shape in nets:
        x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2))
        layers = parse_network(model, shape)
        kinds = [layer.kind for layer in layers]
        assert kinds.count("fork") == kinds.count("add")
        with torch.no_grad():
            want = model(x).double()
            got = forward_layers(layers, x.double())
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    kinds = [layer.kind for layer in parse_network(nets[2][0], (3, 8, 8))]
    assert kinds.count("add") == 15 and kinds.count("relu") == 31
    assert "maxpool" in [layer.kind for layer in parse_network(nets[3][0], (3, 8, 8))]


# --- soundness against enumeration --------------------------------------------------------


@pytest.mark.parametrize(
    "seed,blocks,shortcut", [(0, 1, False), (1, 1, True), (2, 2, False), (3, 2, True)]
)
def test_bounds_are_below_the_enumerated_minimum(seed: int, blocks: int, shortcut: bool) -> None:
    net = tiny_residual_net(seed, width=3 if blocks == 1 else 2, blocks=blocks, shortcut=shortcut)
    x = torch.rand(4, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = net(x).argmax(1)
    gaps = []
    for eps in (0.05, 0.2):
        ibp = certify(net, x, y, epsilon=eps, method="ibp").margins
        crown = certify(net, x, y, epsilon=eps, method="crown").margins
        alpha = alpha_certify(net, x, y, epsilon=eps, iterations=10).margins
        exact = torch.full_like(crown, math.inf)
        for i in range(x.shape[0]):
            exact[i, :] = enum_min_margin(net, x[i].numpy(), int(y[i]), eps)
        lowest = torch.where(torch.isfinite(crown), crown, math.inf).min(1).values
        check_order(ibp.min(1).values, lowest, exact[:, 0], f"seed {seed} eps {eps}")
        assert bool((alpha.min(1).values >= lowest - TOL).all())
        assert bool((alpha.min(1).values <= exact[:, 0] + TOL).all())
        gaps.append(exact[:, 0] - lowest)
    # the bounds are not vacuous: somewhere CROWN is within reach of the true minimum
    assert float(torch.cat(gaps).min()) < 0.5


# --- trained conv residual nets on digits --------------------------------------------------


@pytest.fixture(scope="module")
def digits_resnet(digits: Dataset) -> nn.Module:
    """The conv residual net trained 6 epochs on digits (BatchNorm statistics from
    training), eval mode."""
    torch.manual_seed(0)
    model = conv_residual_net()
    train_model(model, digits.train, TrainSettings(epochs=6, batch_size=64, seed=0), progress=False)
    return model.eval()


def test_trained_residual_net_bounds_are_below_pgd(digits: Dataset, digits_resnet) -> None:
    x, y = digits.test.x[:12], digits.test.y[:12]
    with torch.no_grad():
        acc = float((digits_resnet(x).argmax(1) == y).float().mean())
    assert acc > 0.5, f"the residual net did not learn ({acc:.2f})"
    certified_any = False
    for eps in (0.005, 0.02):
        ibp = certify(digits_resnet, x, y, epsilon=eps, method="ibp")
        crown = certify(digits_resnet, x, y, epsilon=eps, method="crown")
        alpha = alpha_certify(digits_resnet, x, y, epsilon=eps, iterations=10)
        upper = pgd_margins(digits_resnet, x, y, eps, steps=20)
        digits_resnet.float()
        fin = torch.isfinite(upper)
        check_order(ibp.margins, crown.margins, upper, f"eps {eps}")
        assert bool((alpha.margins[fin] >= crown.margins[fin] - TOL).all())
        assert bool((alpha.margins[fin] <= upper[fin] + TOL).all())
        assert bool((ibp.certified <= crown.certified).all())
        assert bool((crown.certified <= alpha.certified).all())
        # no certified point has a PGD-found adversarial
        assert not bool((alpha.certified & (upper <= 0).any(1)).any())
        certified_any |= bool(crown.certified.any())
    assert certified_any, "CROWN certified nothing: the test would not see a wrong bound"


# --- the project's builders ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet32", "vgg"])
def test_project_builders_certify_small_inputs(name: str) -> None:
    builder, size, eps = {"resnet32": (resnet32, 4, 1e-3), "vgg": (vgg, 2, 1e-3)}[name]
    shape = (3, size, size)
    torch.manual_seed(0)
    model = _calibrated(builder(shape, 10, (0.5,) * 3, (0.25,) * 3), shape)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    ibp = certify(model, x, y, epsilon=eps, method="ibp")
    crown = certify(model, x, y, epsilon=eps, method="crown")
    alpha = alpha_certify(model, x, y, epsilon=eps, iterations=2)
    upper = pgd_margins(model, x, y, eps, steps=5, random_start=False)
    model.float()
    check_order(ibp.margins, crown.margins, upper, name)
    fin = torch.isfinite(upper)
    assert bool((alpha.margins[fin] >= crown.margins[fin] - TOL).all())
    assert bool((alpha.margins[fin] <= upper[fin] + TOL).all())
    assert bool((crown.unstable.sum(1) <= ibp.unstable.sum(1)).all())


# --- what is not supported says so ----------------------------------------------------------


def test_unsupported_uses_raise_one_line_model_errors() -> None:
    net = tiny_residual_net(0).float()
    x = torch.rand(2, 2, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    with pytest.raises(ModelError, match="MILP cannot encode residual") as err:
        verify_exact(net, x, y, epsilon=0.05, time_limit=5.0)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="branch and bound does not handle residual"):
        verify_bab(net, x, y, epsilon=0.05, time_limit=5.0)
    bad = [
        nn.Sequential(nn.Linear(2, 2), Residual(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 3)),
        nn.Sequential(nn.Linear(2, 2), Residual(nn.Linear(2, 3)), nn.Linear(3, 3)),
    ]
    for model in bad:
        with pytest.raises(ModelError, match="Residual") as err:
            parse_network(model, (2,))
        assert "\n" not in str(err.value)
    pools = [nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(3),
             nn.AvgPool2d(3, padding=1, count_include_pad=False)]  # fmt: skip
    for pool in pools:
        model = nn.Sequential(pool, nn.Flatten(), nn.Linear(4, 2))
        with pytest.raises(ModelError, match="AvgPool2d") as err:
            parse_network(model, (1, 4, 4))
        assert "\n" not in str(err.value)
