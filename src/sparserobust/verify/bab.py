"""Complete l_inf verification by branch and bound over ReLU splits (beta-CROWN style).

Threat set: the l_inf ball of radius ``eps`` around ``x`` intersected with the [0,1]
box, in [0,1] pixel space. Per point the verifier runs, cheapest first:

1. the clean check (misclassified: a counterexample at distance 0), CROWN
   (:func:`~sparserobust.verify.certification.bound_pass`), a PGD attack (one batched
   attack on all points), a short search (step 2, ``quick_domains``) on CROWN's
   intermediate bounds whose first pass is alpha-CROWN
   (:mod:`~sparserobust.verify.alpha`) on every margin ``f_y - f_j`` CROWN leaves open;
   then alpha-CROWN on re-optimised intermediate bounds (``root_intermediate``), on
   which the short search's open domains go on;
2. for every class ``j`` alpha-CROWN leaves unproven, a *domain* (the whole ball),
   then branch and bound: the ``batch_domains`` domains with the lowest bounds each
   split their best unstable ReLU by the BaBSR score (:mod:`~sparserobust.verify.branching`)
   into ``z >= 0`` and ``z <= 0``; all children are bounded in one batched pass. A
   split neuron's bounds are clamped (``l = 0`` or ``u = 0``, so its relaxation is
   exact), the later layers' intermediate bounds are re-computed by CROWN under the
   clamped ones, and the split constraints ``s z >= 0`` enter the bound with
   beta-CROWN multipliers ``beta >= 0`` (``f >= f - beta s z`` on the domain), optimised
   jointly with the alpha slopes by projected Adam (Wang et al., NeurIPS 2021). A
   domain whose bound is > 0 is proven; every bound pass also evaluates the input that
   minimises each domain's linear bound, so counterexamples surface early;
3. a domain with no unstable ReLU left (a *leaf*) is decided exactly by one LP: the
   network is affine on the ReLU pattern, and the pattern's constraints cut the ball to
   exactly that domain.

Statuses as :mod:`~sparserobust.verify.exact`'s (:class:`ExactResult`): ``verified``
(every class's domains proven; ``margin_lower`` a proven lower bound of the minimal
margin; on a ``timeout`` too, then <= 0: how far the search was from a proof),
``counterexample`` (an input our own float32 forward pass misclassifies, checked
to lie in the box and the ball), ``timeout`` (time limit, too many domains, out of device memory,
or a leaf the relaxation cannot decide: never verified), ``error`` (an exception, or an LP point
that fails the forward-pass check: the margin is within float tolerance of 0).

Complete for networks whose only nonlinearity is ReLU: with time, every domain is
proven, refuted, or split down to an exact LP leaf. Max-pool layers are never branched
on; they keep alpha-CROWN's optimised relaxation
(:func:`~sparserobust.verify.alpha.pool_backward`, its weights per domain, warm-started
from the parent's); on such networks (LeNet-5) the verifier is sound but not complete (a
leaf the relaxation leaves undecided ends the point as ``timeout``). Bounds
are computed in floating point (float64 by default) without directed rounding, as
:func:`certify`'s. Runs on the model's device (CUDA when the model is there), the LPs on
the CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparserobust.errors import ConfigError, ModelError
from sparserobust.norms import parse_norm
from sparserobust.utils import eval_mode, model_device
from sparserobust.verify.alpha import (
    Bounds,
    initial_params,
    optimize_bounds,
    optimize_intermediate,
    relaxed_lower,
    relu_indices,
)
from sparserobust.verify.branching import babsr_candidates, babsr_choice
from sparserobust.verify.certification import bound_pass, check_labels, margin_spec
from sparserobust.verify.crown import tighten
from sparserobust.verify.domains import Domains, root_domains
from sparserobust.verify.exact import (
    ExactResult,
    check_counterexample,
    check_points,
    is_misclassified,
)
from sparserobust.verify.leaf import leaf_lp
from sparserobust.verify.network import Layer, parse_network
from sparserobust.verify.threat import InputSet

log = logging.getLogger(__name__)

__all__ = ["BabSettings", "leaf_lp", "verify_bab"]


@dataclass(frozen=True)
class BabSettings:
    """Hyperparameters of :func:`verify_bab`.

    - ``batch_domains``: domains split per bound pass (twice as many children bounded);
    - ``iterations`` / ``root_iterations``: Adam steps on alpha (and beta) per bound pass
      of the children / of the root's alpha-CROWN; ``lr_alpha``, ``lr_beta``: step sizes;
    - ``root_intermediate``: Adam steps of alpha-CROWN on the intermediate bounds of the
      ReLU layers after the first nonlinear layer, once per point before branching, in at
      most a third of the point's time (0: CROWN's). Before it, a search on CROWN's
      intermediate bounds until it has bounded ``quick_domains`` domains (0: none; its
      first pass is alpha-CROWN) or spent ``quick_share`` of the point's time (a LeNet-5
      domain costs about 30 times a LeNet-300-100 one), with ``quick_iterations`` Adam
      steps per bound pass: that proves most points that need few splits at a fraction
      of the cost (on the 90% sparse LeNet-300-100, 3 steps halve the median time of 10
      with about the same domains). A search that runs out of budget goes on from its
      open domains (splits kept, bounds intersected with the re-optimised ones), with
      ``iterations`` steps, so the budget costs no work; without a quick search, the
      root's alpha-CROWN (``root_iterations``) on the re-optimised bounds starts it;
    - ``branching``: ``babsr`` (the BaBSR score, :mod:`~sparserobust.verify.branching`) or
      ``fsb`` (filtered smart branching, De Palma et al. 2021: the ``fsb_candidates``
      best neurons by BaBSR score, of which the one whose weaker child has the higher
      bound in one extra bound pass with the parent's parameters);
    - ``tighten_intermediate``: re-compute the intermediate bounds of the ReLU layers
      after the first under each child's splits (CROWN); else the parent's, clamped;
    - ``pgd_steps``, ``pgd_restarts``: the PGD attack on each point before branching
      (0 steps: none);
    - ``max_domains``: open domains at most (more: ``timeout``, memory);
    - ``leaf_lp``: decide leaves by LP (needed for completeness);
    - ``dtype``: of the bounds.
    """

    batch_domains: int = 256
    iterations: int = 10
    root_iterations: int = 50
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    tighten_intermediate: bool = False
    branching: str = "babsr"
    fsb_candidates: int = 3
    root_intermediate: int = 20
    quick_domains: int = 1024
    quick_iterations: int = 3
    quick_share: float = 0.05
    pgd_steps: int = 50
    pgd_restarts: int = 2
    max_domains: int = 50_000
    leaf_lp: bool = True
    dtype: torch.dtype = torch.float64

    @classmethod
    def for_device(cls, device: torch.device | str, **changes: object) -> BabSettings:
        """The defaults sized for ``device``, with ``changes``: on CUDA, 2,048 domains per
        bound pass and up to 2,000,000 open domains (on an H200, LeNet-300-100 at l_inf
        0.05 bounds about 70,000 domains/s, 7x the rate with 256 domains per pass, which
        reaches the CPU's cap of 50,000 open domains in 10 s; a GPU with less memory ends a
        point as ``timeout`` when it runs out, never as verified); elsewhere the class
        defaults."""
        sized: dict[str, object] = {}
        if torch.device(device).type == "cuda":
            sized = {"batch_domains": 2048, "max_domains": 2_000_000}
        return cls(**{**sized, **changes})  # type: ignore[arg-type]


class _Found(Exception):
    """A decision reached inside the search (counterexample or error)."""

    def __init__(self, status: str, detail: str, x: torch.Tensor | None = None,
                 margin: float | None = None) -> None:  # fmt: skip
        super().__init__(detail)
        self.status, self.detail, self.x, self.margin = status, detail, x, margin


def _margin(model: nn.Module, x: torch.Tensor, y: int) -> float:
    """``f_y - max_{j != y} f_j`` at ``x`` ``(C, H, W)`` by our forward pass (logits)."""
    with torch.no_grad():
        logits = model(x.unsqueeze(0))[0]
    return float(logits[y] - torch.cat([logits[:y], logits[y + 1 :]]).max())


class _Search:
    """Branch and bound for one point, over the classes alpha-CROWN left unproven."""

    def __init__(
        self, model: nn.Module, layers: list[Layer], x0: torch.Tensor, y: int, eps: float,
        pre: Bounds, settings: BabSettings, deadline: float, root: torch.Tensor,
        iterations: int | None = None,
    ) -> None:  # fmt: skip
        self.model, self.layers, self.x0, self.y, self.eps = model, layers, x0, y, eps
        self.pre, self.s, self.deadline = pre, settings, deadline
        self.iterations = settings.iterations if iterations is None else iterations
        self.relus = relu_indices(layers)
        self.has_pool = any(layer.kind == "maxpool" for layer in layers)
        self.k = layers[-1].out_shape[0]
        # min over proven domains' bounds, from the classes the root bounds ``root``
        # ``(K,)`` (inf at the label) already prove
        proven = root[root > 0]
        self.lower = float(proven.min()) if proven.numel() else math.inf
        self.undecided_leaf = False
        # the lowest bound of what a stop left unproven (open domains, undecided leaves)
        self.unproven = math.inf
        self.too_many = False  # stopped at max_domains open domains
        self.domains_bounded = 0
        self.open: Domains | None = None  # the open domains a ``budget`` stop left

    def rebase(self, pre: Bounds) -> Domains:
        """The open domains a ``budget`` stop left, on the tighter intermediate bounds
        ``pre`` (each domain's bounds intersected with them: both hold on the domain; a
        domain they leave empty is closed at its next bound pass); later passes use ``pre``
        and the full search's Adam steps."""
        assert self.open is not None
        dom, self.open = self.open, None
        for i in dom.lo:
            dom.lo[i] = torch.maximum(dom.lo[i], pre[i][0])
            dom.hi[i] = torch.minimum(dom.hi[i], pre[i][1])
        self.pre, self.iterations = pre, self.s.iterations
        return dom

    def _inp(self, n: int) -> InputSet:
        x = self.x0.unsqueeze(0).expand(n, *self.x0.shape)
        return InputSet(x, torch.full((n,), self.eps, dtype=x.dtype, device=x.device), math.inf)

    def _pre(self, dom: Domains) -> Bounds:
        n = dom.size
        pre: Bounds = {}
        for i, (lo, hi) in self.pre.items():
            if i in dom.lo:
                pre[i] = (dom.lo[i], dom.hi[i])
            else:
                pre[i] = (lo.expand(n, *lo.shape[1:]), hi.expand(n, *hi.shape[1:]))
        return pre

    def bound(self, dom: Domains, iterations: int) -> None:
        """Bound ``dom`` in place (bounds, parameters, next split) and check the inputs
        that minimise its linear bounds for counterexamples."""
        n = dom.size
        inp = self._inp(n)
        pre = self._pre(dom)
        if self.s.tighten_intermediate and any(bool((v != 0).any()) for v in dom.sign.values()):
            for i in self.relus[1:]:
                lo, hi = tighten(self.layers, i, *pre[i], pre, inp)
                pre[i] = (lo, hi)
                dom.lo[i], dom.hi[i] = lo, hi
        empty = torch.zeros(n, dtype=torch.bool, device=self.x0.device)
        for i in self.relus:
            empty |= (dom.lo[i] > dom.hi[i]).flatten(1).any(1)
        yy = torch.full((n,), self.y, dtype=torch.long, device=self.x0.device)
        rows = torch.arange(n, device=yy.device)
        spec = margin_spec(yy, self.k, self.x0.dtype)[rows, dom.cls].unsqueeze(1)
        signs = {i: dom.sign[i].to(self.x0.dtype) for i in self.relus}
        record: dict[int, torch.Tensor] = {}
        with torch.enable_grad():
            best, al, be, coef = optimize_bounds(
                self.layers, spec, pre, inp, dom.alpha, dom.beta, signs, iterations=iterations,
                lr_alpha=self.s.lr_alpha, lr_beta=self.s.lr_beta, stop_above=0.0,
                deadline=self.deadline, record=record,
            )  # fmt: skip
        dom.alpha, dom.beta = al, be
        # a child is inside its parent: the parent's bound (carried in ``dom.bound``) holds
        bnd = torch.maximum(best[:, 0], dom.bound)
        dom.bound = torch.where(empty, torch.full_like(bnd, math.inf), bnd)
        coefs = {i: record[i][:, 0] for i in self.relus}
        if self.s.branching == "fsb":
            dom.layer, dom.index = self._fsb(dom, pre, coefs, spec, inp)
        else:
            dom.layer, dom.index = babsr_choice(
                self.relus, {i: pre[i] for i in self.relus}, coefs, n, dom.cls.device
            )
        self.domains_bounded += n
        self._check_primal(dom, coef[:, 0], inp)

    def _fsb(
        self, dom: Domains, pre: Bounds, coefs: dict[int, torch.Tensor], spec: torch.Tensor,
        inp: InputSet,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Filtered smart branching: per domain, the ``fsb_candidates`` unstable neurons
        with the best BaBSR scores; each candidate's two children are bounded in one
        batched pass with the domain's own alpha and beta (no optimisation), and the
        candidate whose weaker child's bound is highest is split. Layer -1: a leaf."""
        n, dev = dom.size, dom.cls.device
        bounds = {i: pre[i] for i in self.relus}
        layer, index = babsr_candidates(self.relus, bounds, coefs, self.s.fsb_candidates, n, dev)
        k, valid = layer.shape[1], layer >= 0
        trial = dom.take(torch.arange(n, device=dev).repeat(k))
        trial.layer, trial.index = layer.T.reshape(-1), index.T.reshape(-1)
        kids = self.split(trial)  # (active, inactive) x (candidate, domain)
        kpre = self._pre(kids)
        m = kids.size
        signs = {i: kids.sign[i].to(self.x0.dtype) for i in self.relus}
        betas = {i: kids.beta[i] * signs[i].unsqueeze(1) for i in kids.beta}
        kspec = spec.repeat(2 * k, *([1] * (spec.dim() - 1)))
        zero = torch.zeros(m, 1, dtype=spec.dtype, device=dev)
        with torch.no_grad():
            bnd = relaxed_lower(self.layers, kspec, zero, kpre, self._inp(m), kids.alpha,
                                betas)[0][:, 0]  # fmt: skip
        # (no empty children here: a split only clamps an unstable neuron's own bound to 0)
        worst = bnd.view(2, k, n).min(0).values.T  # (n, k)
        worst = torch.where(valid, worst, torch.full_like(worst, -math.inf))
        best = worst.argmax(1, keepdim=True)
        return layer.gather(1, best)[:, 0], index.gather(1, best)[:, 0]

    def _check_primal(self, dom: Domains, coef: torch.Tensor, inp: InputSet) -> None:
        """The input minimising each unproven domain's linear bound, through our model."""
        todo = (dom.bound <= 0).nonzero().flatten()
        if not len(todo):
            return
        c = coef[todo]
        cand = torch.where(c > 0, inp.lo[todo], inp.hi[todo])
        mdtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            logits = self.model(cand.to(mdtype))
        own = logits[:, self.y]
        other = logits.clone()
        other[:, self.y] = -math.inf
        for r in (other.max(1).values > own).nonzero().flatten().tolist():
            checked = check_counterexample(self.model, self.x0.to(mdtype), cand[r].to(mdtype),
                                           self.y, self.eps)  # fmt: skip
            if checked is not None:
                raise _Found("counterexample", "bound minimiser", checked,
                             _margin(self.model, checked, self.y))  # fmt: skip

    def split(self, dom: Domains) -> Domains:
        """Two children per domain of ``dom`` (all non-leaves): active, then inactive."""
        n = dom.size
        rows = torch.arange(n, device=dom.cls.device).repeat(2)
        kids = dom.take(rows)
        s = torch.cat([torch.ones(n, device=self.x0.device), -torch.ones(n, device=self.x0.device)])
        for i in self.relus:
            sel = (kids.layer == i).nonzero().flatten()
            if not len(sel):
                continue
            j = kids.index[sel]
            sign, lo, hi = (kids.sign[i].flatten(1), kids.lo[i].flatten(1).clone(),
                            kids.hi[i].flatten(1).clone())  # fmt: skip
            sign = sign.clone()
            sign[sel, j] = s[sel].to(sign.dtype)
            up = s[sel] > 0
            lo[sel, j] = torch.where(up, lo[sel, j].clamp_min(0), lo[sel, j])
            hi[sel, j] = torch.where(up, hi[sel, j], hi[sel, j].clamp_max(0))
            shape = kids.lo[i].shape
            kids.sign[i], kids.lo[i], kids.hi[i] = sign.view(shape), lo.view(shape), hi.view(shape)
        return kids

    def leaf(self, dom: Domains, r: int) -> None:
        """Decide leaf ``r`` of ``dom`` by LP; an undecidable one is remembered."""
        if not self.s.leaf_lp or self.has_pool:
            self.undecided_leaf = True
            self.unproven = min(self.unproven, float(dom.bound[r]))
            return
        lo = {i: dom.lo[i][r] for i in self.relus}
        hi = {i: dom.hi[i][r] for i in self.relus}
        cls = int(dom.cls[r])
        value, sol = leaf_lp(self.layers, self.x0, self.eps, self.y, cls, lo, hi)
        if value > 0:
            self.lower = min(self.lower, value)
            return
        assert sol is not None
        mdtype = next(self.model.parameters()).dtype
        cand = torch.as_tensor(sol, device=self.x0.device).view_as(self.x0)
        checked = check_counterexample(self.model, self.x0.to(mdtype), cand.to(mdtype), self.y,
                                       self.eps)  # fmt: skip
        if checked is not None:
            raise _Found("counterexample", f"leaf LP, class {cls}", checked,
                         _margin(self.model, checked, self.y))  # fmt: skip
        raise _Found("error", f"class {cls}: leaf LP point (margin {value:.3g}) failed the "
                     "forward-pass check; the true margin is within float tolerance of 0",
                     margin=value)  # fmt: skip

    def run(self, dom: Domains, budget: int | None = None, until: float | None = None) -> str:
        """Search until every domain is proven (``verified``) or time runs out
        (``timeout``), or, with a ``budget`` (domains) or ``until`` (a
        ``time.perf_counter()`` value), until that many domains were bounded or that time
        has passed with some still open (``budget``); raises :class:`_Found` for a
        counterexample or an error."""
        if time.perf_counter() > self.deadline:
            return self._stop(dom)
        self.bound(dom, self.iterations)
        while True:
            proven = dom.bound > 0
            if bool(proven.any()):
                self.lower = min(self.lower, float(dom.bound[proven].min()))
                dom = dom.take((~proven).nonzero().flatten())
            if dom.size == 0:
                return "timeout" if self.undecided_leaf else "verified"
            if time.perf_counter() > self.deadline:
                return self._stop(dom)
            if (budget is not None and self.domains_bounded >= budget) or (
                until is not None and time.perf_counter() > until
            ):
                self.open = dom
                return "budget"
            if dom.size > self.s.max_domains:
                self.too_many = True
                return self._stop(dom)
            order = torch.argsort(dom.bound)
            pick, rest = order[: self.s.batch_domains], order[self.s.batch_domains :]
            batch, dom = dom.take(pick), dom.take(rest)
            is_leaf = batch.layer < 0
            for r in is_leaf.nonzero().flatten().tolist():
                self.leaf(batch, r)
                if time.perf_counter() > self.deadline:
                    return self._stop(dom, batch)
            batch = batch.take((~is_leaf).nonzero().flatten())
            if batch.size:
                kids = self.split(batch)
                self.bound(kids, self.iterations)
                dom = Domains.cat(dom, kids)

    def _stop(self, *left: Domains) -> str:
        """A timeout that leaves the domains ``left`` open (their bounds are kept)."""
        for d in left:
            if d.size:
                self.unproven = min(self.unproven, float(d.bound.min()))
        return "timeout"


def _pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, s: BabSettings
) -> list[torch.Tensor | None]:
    """Per point of ``x`` ``(N, C, H, W)``, a PGD adversarial (one batched attack, seed 0;
    the attack's own success check), or None; all None when ``pgd_steps`` is 0."""
    if s.pgd_steps <= 0:
        return [None] * x.shape[0]
    from sparserobust.attacks import get_attack

    attack = get_attack("pgd", "inf", steps=s.pgd_steps, restarts=s.pgd_restarts)
    res = attack.run(model, x, y, epsilons=[eps], seed=0)
    return [res.x_adv[0, i] if bool(res.success[0, i]) else None for i in range(x.shape[0])]


def _finish(res: ExactResult, search: _Search, status: str, s: BabSettings) -> ExactResult:
    """``res`` with the full search's ``status``, its lower bound (<= 0 on a timeout: how
    far from a proof) and, if it stopped early, why."""
    res.status = status
    low = min(search.lower, search.unproven)  # the lowest bound of any part of the ball
    res.margin_lower = low if math.isfinite(low) else None
    if status == "verified":
        return res
    if search.undecided_leaf:
        res.detail += "; a leaf (every ReLU split) the max-pool relaxation leaves undecided"
    elif search.too_many:
        res.detail += f"; more than {s.max_domains} open domains"
    return res


def _verify_point(
    model: nn.Module, layers: list[Layer], x0: torch.Tensor, y: int, eps: float,
    time_limit: float, s: BabSettings, index: int, adv: torch.Tensor | None = None,
    spent: float = 0.0,
) -> ExactResult:  # fmt: skip
    """The branch-and-bound verdict for one point ``x0`` ``(C, H, W)`` (model dtype).
    ``adv``: the PGD pre-check's adversarial of the point, or None; ``spent``: the
    point's share of that attack's seconds (part of its time and of its limit)."""
    start = time.perf_counter() - spent
    deadline = start + time_limit
    res = ExactResult(index, eps, "error", "bab", 0.0)
    try:
        if is_misclassified(model, x0, y):
            res.status, res.by, res.counterexample = "counterexample", "clean", x0.cpu()
            res.margin_upper, res.detail = 0.0, "misclassified"
            return res
        xd = x0.to(s.dtype).unsqueeze(0)
        yt = torch.tensor([y], device=x0.device)
        et = torch.tensor([eps], dtype=s.dtype, device=x0.device)
        crown = bound_pass(layers, xd, yt, et, math.inf, "crown")
        ibp = bound_pass(layers, xd, None, et, math.inf, "ibp")
        relus = [c for c, layer in enumerate(la for la in layers if la.nonlinear)
                 if layer.kind == "relu"]  # fmt: skip
        res.unstable = {"ibp": int(ibp.unstable[0, relus].sum()),
                        "crown": int(crown.unstable[0, relus].sum())}  # fmt: skip
        margins = crown.margins[0]
        if bool((margins > 0).all()):
            res.status, res.by, res.margin_lower = "verified", "crown", float(margins.min())
            return res
        if adv is not None:
            checked = check_counterexample(model, x0, adv, y, eps)
            if checked is not None:
                res.status, res.by, res.counterexample = "counterexample", "attack", checked.cpu()
                res.margin_upper = _margin(model, checked, y)
                return res
        k = layers[-1].out_shape[0]
        inp = InputSet(xd, et, math.inf)
        # the margins CROWN left open only (one row each); every bound stops once proven
        rows = (margins <= 0).nonzero().flatten()
        spec = margin_spec(yt, k, s.dtype)[:, rows]
        pre = crown.pre
        best = margins.clone()
        bounded = 0
        quick: _Search | None = None
        if s.quick_domains > 0 and s.root_intermediate > 0:
            # a short search on CROWN's intermediate bounds first (its first pass is
            # alpha-CROWN on the whole ball): most points that few splits prove never pay
            # for re-optimising those bounds
            alpha = initial_params(layers, pre, len(rows))
            quick = _Search(model, layers, xd[0], y, eps, pre, s, deadline, best,
                            s.quick_iterations)  # fmt: skip
            try:
                status = quick.run(root_domains(layers, pre, best, rows, alpha, y),
                                   budget=s.quick_domains,
                                   until=start + s.quick_share * time_limit)  # fmt: skip
            finally:
                bounded += quick.domains_bounded
                res.detail = f"{bounded} domains bounded"
            if status == "verified":
                res.status, res.margin_lower = "verified", quick.lower
                if quick.domains_bounded == len(rows):  # no split: the root's bound
                    res.by, res.detail = "alpha", "alpha-CROWN on CROWN's intermediate bounds"
                else:
                    res.by = "bab"
                return res
        if s.root_intermediate > 0:
            pre = optimize_intermediate(  # at most a third of the point's time
                layers, pre, inp, iterations=s.root_intermediate, lr=s.lr_alpha,
                deadline=start + time_limit / 3,
            )  # fmt: skip
        if quick is not None and quick.open is not None:
            # the quick search ran out of budget: its open domains go on, on the tighter
            # intermediate bounds (its splits and proofs are kept, no work is lost)
            try:
                status = quick.run(quick.rebase(pre))
            finally:
                res.detail = f"{quick.domains_bounded} domains bounded"
            return _finish(res, quick, status, s)
        alpha = initial_params(layers, pre, len(rows))
        with torch.enable_grad():
            got, alpha, _, _ = optimize_bounds(
                layers, spec, pre, inp, alpha, iterations=s.root_iterations,
                lr_alpha=s.lr_alpha, stop_above=0.0, deadline=deadline,
            )  # fmt: skip
        best[rows] = torch.maximum(best[rows], got[0])
        if bool((best > 0).all()):
            res.status, res.by, res.margin_lower = "verified", "alpha", float(best.min())
            res.detail = f"after a short search of {bounded} domains" if bounded else ""
            return res
        search = _Search(model, layers, xd[0], y, eps, pre, s, deadline, best)
        try:
            status = search.run(root_domains(layers, pre, best, rows, alpha, y))
        finally:
            res.detail = f"{bounded + search.domains_bounded} domains bounded"
        _finish(res, search, status, s)
    except _Found as found:
        res.status, res.detail = found.status, f"{found.detail}; {res.detail}".rstrip("; ")
        res.margin_upper = found.margin
        res.counterexample = None if found.x is None else found.x.cpu()
    except torch.cuda.OutOfMemoryError:  # a resource limit, as max_domains: never verified
        res.status = "timeout"
        res.detail = f"out of device memory; {res.detail}".rstrip("; ")
        torch.cuda.empty_cache()
    except Exception as exc:  # a failure is a status, never a crash
        log.warning("point %d eps %g: branch and bound failed: %s", index, eps, exc)
        res.status, res.detail = "error", f"{type(exc).__name__}: {exc}"
    finally:
        res.seconds = time.perf_counter() - start
    return res


def verify_bab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    norm: float | str = "inf",
    time_limit: float = 30.0,
    settings: BabSettings | None = None,
    indices: Sequence[int] | None = None,
    on_point: Callable[[ExactResult], None] | None = None,
) -> list[ExactResult]:
    """Complete l_inf verdict per point of ``x`` ``(N, C, H, W)`` in [0,1], labels ``y``
    ``(N,)``, by branch and bound (module docstring): one :class:`ExactResult` per point,
    with ``by`` one of ``clean``, ``crown``, ``attack``, ``alpha``, ``bab``.

    ``epsilon``: l_inf radius in [0,1] pixel space (the ball intersected with the [0,1]
    box). ``time_limit``: seconds per point, everything included; a point still open is
    a ``timeout``, never verified. ``settings``: :class:`BabSettings`. ``indices`` label
    the results (default ``0..N-1``); ``on_point`` sees each verdict as it is known. The
    PGD attack of the settings runs once on all points, each point's time including its
    share. Runs on the model's device in eval mode (restored).
    """
    s = settings or BabSettings()
    if math.isfinite(parse_norm(norm)):
        raise ConfigError(f"branch and bound handles the l_inf norm only, got {norm!r}")
    if not (time_limit > 0):
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")
    if (s.batch_domains < 1 or min(s.iterations, s.root_iterations, s.quick_iterations) < 0
            or s.max_domains < 1 or not 0 <= s.quick_share <= 1):  # fmt: skip
        raise ConfigError("BabSettings needs batch_domains, max_domains >= 1, iterations >= 0 "
                          "and quick_share in [0, 1]")  # fmt: skip
    if s.branching not in ("babsr", "fsb") or s.fsb_candidates < 1:
        raise ConfigError(
            f"BabSettings.branching must be babsr or fsb (fsb_candidates >= 1), got "
            f"{s.branching!r} with {s.fsb_candidates} candidates"
        )
    eps, ids = check_points(x, epsilon, indices)
    n = x.shape[0]
    device = model_device(model)
    with eval_mode(model):
        layers = parse_network(model, x.shape[1:], dtype=s.dtype, device=device)
        if any(layer.kind in ("fork", "add") for layer in layers):
            raise ModelError("branch and bound does not handle residual blocks yet: use alpha")
        y = check_labels(y, n, layers[-1].out_shape[0]).to(device)
        x = x.to(device)
        began = time.perf_counter()
        advs = _pgd(model, x, y, eps, s)
        share = (time.perf_counter() - began) / n
        out = []
        for i in range(n):
            out.append(_verify_point(model, layers, x[i], int(y[i]), eps, time_limit, s, ids[i],
                                     advs[i], share))  # fmt: skip
            log.debug("point %d eps %g: %s by %s", ids[i], eps, out[-1].status, out[-1].by)
            if on_point is not None:
                on_point(out[-1])
    return out
