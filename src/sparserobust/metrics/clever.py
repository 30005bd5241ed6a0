"""CLEVER scores (Weng et al. 2018): an extreme-value estimate of local robustness.

For an image ``x0`` predicted as class ``c`` and every other class ``j``, the
margin ``g_j = f_c - f_j`` (logits) is Lipschitz in the l_p ball of radius
``R`` around ``x0`` with constant ``L_j = max ||grad g_j||_q`` (q the dual norm:
q = 2 for p = 2, q = 1 for p = inf). CLEVER estimates ``L_j`` without bounding
it: ``n_batches`` times it draws ``batch_size`` *fresh* points uniformly in the
ball, records the largest gradient norm of the batch, fits a reverse Weibull
distribution (scipy, maximum likelihood; see :func:`reverse_weibull_location`) to these batch
maxima and takes the fitted location (the distribution's upper end) as ``L_j``.
The untargeted score is ``min_j min(g_j(x0) / L_j, R)``: an l_p distance in
[0,1] pixel space, capped at ``R``.

Choices (and how they differ from ART's ``clever_u``):

- Sampling: l2 points are exactly uniform in the ball (Gaussian direction,
  radius ``R * U**(1/d)``); l_inf points uniform in the cube. Like ART (with
  ``clip_values=(0, 1)``) the points are then clipped to the [0,1] box
  (``clip=True``), so they stay valid images; the box-clipped points are not
  uniform in ball-and-box. ART draws one pool of ``10 * batch_size`` points and
  resamples batches from it with replacement; we draw every batch fresh, as the
  CLEVER paper does.
- All ``K - 1`` target classes share the sampled points, and their gradients
  come from one vmapped backward pass per chunk of points (ART runs two
  backward passes per class and chunk).
- The Weibull fit is ART's (negated maxima, ``weibull_min``, Nelder-Mead from
  shape ``c_init``), but guarded: if all maxima are equal (a linear model: the
  gradient is constant) the location is that value, exactly; if the fit
  returns a non-finite location, one above twice the largest observed maximum
  (run off towards the Gumbel limit; ART then reports a score of ~0) or one
  below it, the largest observed maximum is used (``weibull_fitted`` False).
- Seeds: image ``i`` of the call uses its own generator seeded from
  ``numpy.random.SeedSequence([seed, i])``, so a score does not depend on
  ``chunk_size``; the same seed on
  the same device gives identical scores.

Defaults and cost: ``n_batches=20``, ``batch_size=50`` (1,000 fresh points per
image, each giving the gradients of all K-1 margins; the setting validated
against ART in ``tests/metrics/test_clever.py``; Weng et al. used 500 x 1024), and
``radius`` 2.0 for l2, 0.3 for l_inf (MNIST-scale; set your own for other
data). Measured on this project's shared 2-core CPU with other jobs running
(load about 6): LeNet-300-100 on 28x28 MNIST 2.6 s (l2) and 3.1 s (l_inf) per
image with the defaults and about 6.5 s with 50 x 100; on 8x8 digits 0.25-0.5
s per image. Gradient work grows linearly in ``n_batches * batch_size`` and the
input size; each of the K-1 Weibull fits adds about 15-40 ms per image.
See ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import fmin
from scipy.stats import weibull_min
from torch import nn
from tqdm.auto import tqdm

from sparserobust.errors import ConfigError
from sparserobust.metrics.margin import (
    check_metric_inputs,
    dual_norm,
    margin_gradient_norms,
)
from sparserobust.norms import parse_norm
from sparserobust.utils import eval_mode, model_device

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CLEVER_RADIUS", "CleverResult", "clever_scores", "reverse_weibull_location"]

#: Default sampling radius per norm p (l_p distance in [0,1] pixel space).
DEFAULT_CLEVER_RADIUS: dict[float, float] = {2.0: 2.0, math.inf: 0.3}


@dataclass(frozen=True)
class CleverResult:
    """Untargeted CLEVER scores for ``N`` images of a ``K``-class model.

    All tensors are float64 (labels int64) on the CPU.

    - ``scores`` ``(N,)``: CLEVER score, an l_p distance in [0,1] pixel space,
      at most ``radius``.
    - ``predicted`` ``(N,)``: the class ``c`` the model predicts at each image.
    - ``class_scores`` ``(N, K)``: ``min(g_j(x0) / L_j, radius)`` per target
      class ``j`` (``inf`` at ``j = c``); ``scores`` is their row minimum.
    - ``margins`` ``(N, K)``: ``g_j(x0) = f_c(x0) - f_j(x0)`` in logit units
      (``inf`` at ``j = c``).
    - ``lipschitz`` ``(N, K)``: the fitted reverse-Weibull location ``L_j``,
      logit units per unit l_p distance (``nan`` at ``j = c``).
    - ``sample_max`` ``(N, K)``: the largest gradient norm actually observed
      (``nan`` at ``j = c``); ``lipschitz >= sample_max``.
    - ``weibull_fitted`` ``(N, K)`` bool: False where the Weibull fit was
      unusable and ``lipschitz`` is the observed maximum (see
      :func:`reverse_weibull_location`; True at ``j = c``).
    - ``norm``, ``radius``, ``n_batches``, ``batch_size``, ``seed``: the settings;
      ``seconds``: wall time of the call.
    """

    scores: torch.Tensor
    predicted: torch.Tensor
    class_scores: torch.Tensor
    margins: torch.Tensor
    lipschitz: torch.Tensor
    sample_max: torch.Tensor
    weibull_fitted: torch.Tensor
    norm: float
    radius: float
    n_batches: int
    batch_size: int
    seed: int
    seconds: float

    def summary(self) -> dict[str, float]:
        """Mean and median CLEVER score, the settings and seconds per image."""
        n = self.scores.numel()
        return {
            "clever_mean": float(self.scores.mean()) if n else math.nan,
            "clever_median": float(self.scores.median()) if n else math.nan,
            "n_images": float(n),
            "norm": self.norm,
            "radius": self.radius,
            "n_batches": float(self.n_batches),
            "batch_size": float(self.batch_size),
            "seconds_per_image": self.seconds / n if n else math.nan,
            "weibull_fallback_fraction": float((~self.weibull_fitted).float().mean()) if n else 0.0,
        }


def reverse_weibull_location(maxima: np.ndarray, c_init: float = 1.0) -> tuple[float, bool]:
    """Upper end (location) of a reverse Weibull fitted to the batch ``maxima``.

    ``maxima``: 1-d array of batch maxima (non-negative gradient norms). The
    fit is scipy's maximum-likelihood ``fit`` started at shape ``c_init`` with
    scipy's Nelder-Mead (``optimize.fmin``), run on the negated maxima with
    ``weibull_min``, i.e. the reverse Weibull ``weibull_max`` of the maxima
    (the parametrisation ART and the CLEVER authors use; its start point
    behaves better than ``weibull_max.fit``'s on this problem). The 3-parameter
    likelihood has no proper maximum for many samples, so the result is guarded:

    - all maxima equal (a constant gradient, e.g. a linear model): that value;
    - a location below the largest observed maximum (the sample would lie
      outside the fitted support): the largest observed maximum;
    - a non-finite location or one above twice the largest maximum (the fit ran
      off towards its Gumbel limit): the largest observed maximum.

    Returns ``(location, fitted)``: ``fitted`` is False when a guard replaced
    the fitted value. All maxima 0 gives ``(0.0, True)``.
    """
    values = np.asarray(maxima, dtype=np.float64).ravel()
    top = float(values.max())
    if top <= 0.0:
        return 0.0, True
    if float(values.max() - values.min()) <= 1e-7 * top:
        return top, True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _, neg_loc, _ = weibull_min.fit(-values, c_init, optimizer=fmin)
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            log.debug("reverse-Weibull fit failed (%s): using the observed maximum", exc)
            return top, False
    loc = -float(neg_loc)
    if not math.isfinite(loc) or loc > 2.0 * top:
        return top, False
    if loc < top:
        return top, False
    return loc, True


def _sample_ball(
    x0: torch.Tensor, n: int, p: float, radius: float, gen: torch.Generator, clip: bool
) -> torch.Tensor:
    """``n`` points uniform in the l_p ball (p in {2, inf}) of ``radius`` around ``x0``."""
    d = x0.numel()
    if math.isinf(p):
        delta = (torch.rand(n, d, generator=gen, device=x0.device, dtype=x0.dtype) * 2 - 1) * radius
    else:
        direction = torch.randn(n, d, generator=gen, device=x0.device, dtype=x0.dtype)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        u = torch.rand(n, 1, generator=gen, device=x0.device, dtype=x0.dtype)
        delta = direction * (radius * u.pow(1.0 / d))
    points = x0.reshape(1, -1) + delta
    if clip:
        points = points.clamp_(0.0, 1.0)
    return points.reshape(n, *x0.shape)


def clever_scores(
    model: nn.Module,
    x: torch.Tensor,
    *,
    norm: float | str = 2,
    radius: float | None = None,
    n_batches: int = 20,
    batch_size: int = 50,
    seed: int = 0,
    c_init: float = 1.0,
    clip: bool = True,
    chunk_size: int = 1024,
    progress: bool = False,
) -> CleverResult:
    """Untargeted CLEVER scores (Weng et al. 2018) of ``model`` at each image of ``x``.

    ``x``: images in [0,1], shape ``(N, C, H, W)`` (moved to the model's
    device). ``norm``: perturbation norm p, 2 or inf; gradient norms use the
    dual norm (l2 for p=2, l1 for p=inf). ``radius``: sampling radius R, an l_p
    distance in [0,1] pixel space (default :data:`DEFAULT_CLEVER_RADIUS`);
    scores are capped at R. ``n_batches`` batch maxima of ``batch_size`` fresh
    points each feed the reverse-Weibull fit; ``c_init`` initialises its
    shape. ``clip``: clip sampled points to the [0,1] box (as ART does).
    ``chunk_size``: points per forward/backward pass (memory grows as
    ``chunk_size * (K-1) * input size``). ``seed``: sampling seed (image ``i``
    uses a generator seeded from ``(seed, i)``). ``progress``: show a tqdm bar.

    The model is put in eval mode and restored afterwards. Cost grows as
    ``N * n_batches * batch_size`` gradient evaluations of all K-1 classes plus
    ``N * (K-1)`` Weibull fits. Returns :class:`CleverResult`.
    """
    p = parse_norm(norm)
    q = dual_norm(p)
    check_metric_inputs(x)
    r = DEFAULT_CLEVER_RADIUS[p] if radius is None else float(radius)
    if not math.isfinite(r) or r <= 0:
        raise ConfigError(f"radius must be a positive finite l_p distance, got {radius!r}")
    if n_batches < 3:
        raise ConfigError(f"n_batches must be >= 3 (the Weibull fit needs maxima), got {n_batches}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 sample per batch, got {batch_size}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1 point per pass, got {chunk_size}")
    if not c_init > 0:
        raise ConfigError(f"c_init must be a positive Weibull shape, got {c_init!r}")

    start_time = time.perf_counter()
    device = model_device(model)
    batches_per_chunk = max(1, chunk_size // batch_size)
    rows_scores, rows_pred, rows_cls, rows_marg, rows_lip, rows_max = [], [], [], [], [], []
    rows_fit: list[np.ndarray] = []
    with eval_mode(model):
        for i in tqdm(range(x.shape[0]), desc="CLEVER", disable=not progress):
            x0 = x[i].to(device)
            with torch.no_grad():
                c = model(x0.unsqueeze(0)).argmax(dim=1)
            margins0, _, others = margin_gradient_norms(model, x0.unsqueeze(0), c, q)
            k = others.shape[1] + 1
            gen = torch.Generator(device=device)
            gen.manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            norms = []
            for b0 in range(0, n_batches, batches_per_chunk):
                # one draw per batch, so the random stream does not depend on chunk_size
                pts = torch.cat(
                    [
                        _sample_ball(x0, batch_size, p, r, gen, clip)
                        for _ in range(min(batches_per_chunk, n_batches - b0))
                    ]
                )
                for s in range(0, pts.shape[0], chunk_size):
                    part = pts[s : s + chunk_size]
                    _, gn, _ = margin_gradient_norms(model, part, c.expand(part.shape[0]), q)
                    norms.append(gn)
            maxima = torch.cat(norms).view(n_batches, batch_size, k - 1).amax(dim=1)
            maxima_np = maxima.double().cpu().numpy()
            fits = [reverse_weibull_location(maxima_np[:, t], c_init) for t in range(k - 1)]
            lip = np.array([loc for loc, _ in fits])
            fitted = np.ones(k, dtype=bool)
            marg = margins0[0].double().cpu().numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                cls = np.where(lip > 0, marg / lip, np.inf)
            cls = np.minimum(cls, r)
            full = [np.full(k, fill, dtype=np.float64) for fill in (np.inf, np.inf, np.nan, np.nan)]
            cols = others[0].cpu().numpy()
            for arr, val in zip(full, (cls, marg, lip, maxima_np.max(axis=0)), strict=True):
                arr[cols] = val
            fitted[cols] = [ok for _, ok in fits]
            rows_fit.append(fitted)
            rows_scores.append(float(cls.min()))
            rows_pred.append(int(c))
            rows_cls.append(full[0])
            rows_marg.append(full[1])
            rows_lip.append(full[2])
            rows_max.append(full[3])
    seconds = time.perf_counter() - start_time
    result = CleverResult(
        scores=torch.tensor(rows_scores, dtype=torch.float64),
        predicted=torch.tensor(rows_pred, dtype=torch.long),
        class_scores=torch.from_numpy(np.stack(rows_cls)),
        margins=torch.from_numpy(np.stack(rows_marg)),
        lipschitz=torch.from_numpy(np.stack(rows_lip)),
        sample_max=torch.from_numpy(np.stack(rows_max)),
        weibull_fitted=torch.from_numpy(np.stack(rows_fit)),
        norm=p,
        radius=r,
        n_batches=n_batches,
        batch_size=batch_size,
        seed=seed,
        seconds=seconds,
    )
    log.info(
        "CLEVER l%s (R=%g, %dx%d): %d images, median %.4g, %.2f s/image",
        "inf" if math.isinf(p) else "2",
        r,
        n_batches,
        batch_size,
        x.shape[0],
        float(result.scores.median()),
        seconds / x.shape[0],
    )
    return result
