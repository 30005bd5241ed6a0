"""AutoAttack, standard version (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square.

A point counts as robust only if none of the four attacks breaks it. Each attack
runs on the points the earlier ones left robust, with the standard version's
budgets (l_inf and l2 alike):

* APGD-CE: 100 steps, 1 restart (:class:`~sparserobust.attacks.apgd.APGD`);
* APGD-T: targeted DLR against the 9 highest-ranked other classes, 100 steps each
  (:class:`~sparserobust.attacks.apgd.APGDTargeted`);
* FAB-T: targeted FAB against the same 9 classes, 100 steps each
  (:class:`~sparserobust.attacks.fab.FABTargeted`);
* Square: 5000 queries, ``p_init = 0.8`` with the un-rescaled schedule
  (:class:`~sparserobust.attacks.square.Square`).

The result's ``details["broken_by"]`` says, per epsilon and sample, which attack
broke the point first (``"misclassified"`` for clean errors, ``"robust"`` where
none did, ``"certified"`` where ``skip_certified`` proved it), and
``details["seconds_by_attack"]`` the time each attack took.

``skip_certified=True`` (off by default) bounds the points APGD-CE leaves robust
with CROWN (:func:`sparserobust.verify.certify`, float64) and runs the remaining
attacks only on those it cannot certify: no attack can break a certified point, so
the robust accuracy is the same up to the attacks' random draws (fewer points take
part in them), and the certified share comes for free. It pays where CROWN certifies
many points (sparse models, small eps). CROWN is tried first on up to
:data:`CERTIFY_PROBE` points per radius; where the share it certifies there, times
what the remaining attacks would cost per point, is below what CROWN costs per point
(dense models, convolutional nets with max-pooling, large eps), the rest of the
run at that radius is attacked without it. Models CROWN cannot parse are attacked as
usual.

:class:`AutoAttackFast` (``autoattack-fast``; not AutoAttack) runs APGD-CE, APGD-T and
Square with 1000 queries (its p schedule compressed to that budget, as Square's paper
does for budgets other than 10,000), for sweeps where the standard budget on
the surviving points is what costs. Its numbers carry its own name, never
``autoattack``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import nn

from sparserobust.attacks.apgd import APGD, APGDTargeted
from sparserobust.attacks.base import (
    INF,
    AttackResult,
    FixedEpsilonAttack,
    clearly_adversarial,
    parse_norm,
    project,
)
from sparserobust.attacks.fab import FABTargeted
from sparserobust.attacks.square import Square
from sparserobust.errors import AttackError

log = logging.getLogger(__name__)

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
"""The standard version's attacks, in the order they run."""

CERTIFY_PROBE = 32
"""Points CROWN bounds first, per radius, to judge whether it pays."""


ROBUST = "robust"
MISCLASSIFIED = "misclassified"
CERTIFIED = "certified"
CERTIFY_MARGIN = 1e-4
"""A point is skipped only if CROWN's lower bound on every margin exceeds this
(logit units): a guard against the float32 forward pass rounding a margin of
exactly zero the other way."""


class AutoAttack(FixedEpsilonAttack):
    """AutoAttack's standard evaluation at fixed l_inf or l2 radii eps ([0,1] pixel units).

    Runs the attacks named in ``attacks`` (default, and the standard version:
    ``"apgd-ce,apgd-t,fab-t,square"``) in that order, each on the points still
    robust, and keeps the first adversarial found per point (the pointwise
    worst case). ``steps`` (100) is the iteration budget of APGD and FAB per
    run, ``n_target_classes`` (9) the number of targets of APGD-T and FAB-T,
    ``square_queries`` (5000) Square's budget.
    ``skip_certified``: after the first attack, skip the points CROWN certifies
    (module docstring). Untargeted only: passing ``target`` to :meth:`run` raises
    :class:`AttackError`.
    """

    name = "autoattack"
    default_attacks: tuple[str, ...] = STANDARD
    default_square_queries = 5000
    rescale_schedule = False
    """Square's p schedule on the raw query count, as AutoAttack's standard version."""

    def __init__(
        self,
        norm: float | str = INF,
        attacks: str | None = None,
        steps: int = 100,
        n_target_classes: int = 9,
        square_queries: int | None = None,
        batch_size: int = 1000,
        skip_certified: bool = False,
    ) -> None:
        super().__init__(batch_size)
        self.norm = parse_norm(norm)
        attacks = ",".join(self.default_attacks) if attacks is None else attacks
        if square_queries is None:
            square_queries = self.default_square_queries
        names = str(attacks).split(",")
        names = [n.strip().lower() for n in names if n.strip()]
        unknown = [n for n in names if n not in STANDARD]
        if unknown or not names or len(set(names)) != len(names):
            raise AttackError(
                f"{self.name} attacks must be distinct names from {', '.join(STANDARD)}, "
                f"got {attacks!r}"
            )
        self.attacks = ",".join(names)
        self.steps = int(steps)
        self.n_target_classes = int(n_target_classes)
        self.square_queries = int(square_queries)
        if not isinstance(skip_certified, bool):
            raise AttackError(
                f"{self.name} skip_certified must be true or false, got {skip_certified!r}"
            )
        self.skip_certified = skip_certified
        self._certify_failed = False
        self._certify_pays: dict[float, bool] = {}
        if self.steps < 1 or self.n_target_classes < 1 or self.square_queries < 1:
            raise AttackError(
                f"{self.name} needs steps, n_target_classes and square_queries >= 1, got "
                f"{steps}, {n_target_classes}, {square_queries}"
            )
        bs = self.batch_size
        build = {
            "apgd-ce": lambda: APGD(self.norm, self.steps, "ce", batch_size=bs),
            "apgd-t": lambda: APGDTargeted(
                self.norm, self.steps, self.n_target_classes, batch_size=bs
            ),
            "fab-t": lambda: FABTargeted(
                self.norm, self.steps, self.n_target_classes, batch_size=bs
            ),
            "square": lambda: Square(
                self.norm,
                self.square_queries,
                0.8,
                batch_size=bs,
                rescale_schedule=self.rescale_schedule,
            ),
        }
        self._attacks: list[tuple[str, FixedEpsilonAttack]] = [(n, build[n]()) for n in names]
        self._log: list[tuple[torch.Tensor, torch.Tensor, float, list[str]]] = []
        self._seconds: dict[str, float] = {}

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilons: Sequence[float] | float | None = None,
        target: torch.Tensor | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> AttackResult:
        """:meth:`Attack.run`, plus ``details["broken_by"]`` (``E`` lists of ``N``
        names) and ``details["seconds_by_attack"]``."""
        if target is not None:
            raise AttackError(f"{self.name} is untargeted: run it without target")
        self._log, self._seconds = [], {n: 0.0 for n, _ in self._attacks}
        self._certify_failed = False
        self._certify_pays = {}
        try:
            result = super().run(model, x, y, epsilons=epsilons, seed=seed, num_classes=num_classes)
            result.details = {
                "broken_by": self._broken_by(result),
                "seconds_by_attack": {k: round(v, 3) for k, v in self._seconds.items()},
            }
        finally:
            self._log = []
        return result

    def _broken_by(self, result: AttackResult) -> list[list[str]]:
        """Per epsilon (ascending) and sample, the name of the attack that broke it.

        The driver hands :meth:`attack_batch` slices of the inputs without their
        indices, so the logged batches are matched back to samples by content
        (the bytes of the input row and its label)."""
        assert result.epsilons is not None
        xs = result.x.detach().to(torch.float32).flatten(1).cpu()
        ys = result.y.cpu()
        where: dict[tuple[bytes, int], list[int]] = {}
        for i in range(xs.shape[0]):
            where.setdefault((xs[i].numpy().tobytes(), int(ys[i])), []).append(i)
        n = xs.shape[0]
        rows: list[list[str]] = []
        current = [ROBUST] * n
        for e in result.epsilons:
            # broken at a smaller eps stays broken; certified holds for its own eps only
            current = [ROBUST if c == CERTIFIED else c for c in current]
            for xb, yb, eps, codes in self._log:
                if eps != e:
                    continue
                flat, labs = xb.flatten(1).cpu(), yb.cpu()
                for j, code in enumerate(codes):
                    if code == ROBUST:
                        continue
                    for i in where.get((flat[j].numpy().tobytes(), int(labs[j])), []):
                        current[i] = code
            rows.append(current)
        success = result.success.cpu()
        clean = result.clean_correct.cpu()
        out: list[list[str]] = []
        for e, row in enumerate(rows):
            out.append(
                [
                    MISCLASSIFIED
                    if not bool(clean[i])
                    else row[i]
                    if bool(success[e, i]) or row[i] == CERTIFIED
                    else ROBUST
                    for i in range(n)
                ]
            )
        return out

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        if targeted:
            raise AttackError(f"{self.name} is untargeted: run it without target")
        out = x.clone()
        codes = [ROBUST] * x.shape[0]
        todo = torch.arange(x.shape[0], device=x.device)
        first_seconds = 0.0
        for k, (name, attack) in enumerate(self._attacks):
            if todo.numel() == 0:
                break
            if k == 1 and self.skip_certified:
                per_point = first_seconds / x.shape[0]
                todo = self._drop_certified(model, x, labels, todo, epsilon, codes, per_point)
                if todo.numel() == 0:
                    break
            start = time.perf_counter()
            adv = attack.attack_batch(model, x[todo], labels[todo], False, gen, epsilon)
            adv = project(x[todo], adv.detach(), self.norm, epsilon)
            with torch.no_grad():
                ok = clearly_adversarial(model(adv), labels[todo], False)
            out[todo[ok]] = adv[ok]
            for i in todo[ok].tolist():
                codes[i] = name
            todo = todo[~ok]
            seconds = time.perf_counter() - start
            if k == 0:
                first_seconds = seconds
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds
            log.info(
                "autoattack eps %g: %s broke %d points in %.2fs, %d left",
                epsilon,
                name,
                int(ok.sum()),
                seconds,
                todo.numel(),
            )
        self._log.append((x, labels, float(epsilon), codes))
        return out

    def _drop_certified(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        todo: torch.Tensor,
        epsilon: float,
        codes: list[str],
        first_per_point: float,
    ) -> torch.Tensor:
        """``todo`` without the points CROWN certifies at ``epsilon`` (coded
        ``certified``). A model CROWN cannot bound is attacked as usual; where CROWN
        does not pay at ``epsilon`` (module docstring), it stops being tried there.
        ``first_per_point``: the first attack's seconds per point on this batch."""
        if self._certify_failed or not self._certify_pays.get(epsilon, True):
            return todo
        if epsilon in self._certify_pays:
            return todo[~self._certified(model, x, labels, todo, epsilon, codes)]
        probe, rest = todo[:CERTIFY_PROBE], todo[CERTIFY_PROBE:]
        start = time.perf_counter()
        sure = self._certified(model, x, labels, probe, epsilon, codes)
        crown_per_point = (time.perf_counter() - start) / max(probe.numel(), 1)
        saved_per_point = float(sure.float().mean()) * self._survivor_cost(first_per_point)
        pays = saved_per_point > crown_per_point
        self._certify_pays[epsilon] = pays
        if not pays:
            log.info(
                "autoattack eps %g: crown certified %d of %d probe points at %.3fs each, "
                "more than the %.3fs per point it saves; not tried on the rest",
                epsilon,
                int(sure.sum()),
                probe.numel(),
                crown_per_point,
                saved_per_point,
            )
        if pays and rest.numel():
            rest = rest[~self._certified(model, x, labels, rest, epsilon, codes)]
        return torch.cat([probe[~sure], rest])

    def _survivor_cost(self, first_per_point: float) -> float:
        """Estimated seconds the attacks after the first spend on a point that stays
        robust: the first attack's seconds per point, times the later attacks' budgets
        in its units (each APGD-T or FAB-T target a run as long as the first; Square
        queries counted as half a step: one forward, no backward), times 2 (the first
        attack's average is lowered by the points it breaks early)."""
        runs = sum(
            self.n_target_classes
            if name in ("apgd-t", "fab-t")
            else self.square_queries / (2 * self.steps)
            if name == "square"
            else 1.0
            for name, _ in self._attacks[1:]
        )
        return 2.0 * first_per_point * runs

    def _certified(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        idx: torch.Tensor,
        epsilon: float,
        codes: list[str],
    ) -> torch.Tensor:
        """Bool mask over ``idx``: the points CROWN certifies at ``epsilon`` (coded
        ``certified``); all False where CROWN cannot bound the model."""
        from sparserobust.errors import SparseRobustError
        from sparserobust.verify.certification import certify

        none = torch.zeros(idx.numel(), dtype=torch.bool, device=idx.device)
        if self._certify_failed or idx.numel() == 0:
            return none
        start = time.perf_counter()
        try:
            res = certify(model, x[idx], labels[idx], epsilon=epsilon, norm=self.norm)
        except SparseRobustError as exc:
            self._certify_failed = True
            log.info("autoattack: CROWN cannot bound this model (%s); no points skipped", exc)
            return none
        sure = (res.margins.min(1).values > CERTIFY_MARGIN) & res.clean_correct
        sure = sure.to(idx.device)
        for i in idx[sure].tolist():
            codes[i] = CERTIFIED
        seconds = time.perf_counter() - start
        self._seconds["crown"] = self._seconds.get("crown", 0.0) + seconds
        log.info(
            "autoattack eps %g: crown certified %d of %d points in %.2fs",
            epsilon,
            int(sure.sum()),
            idx.numel(),
            seconds,
        )
        return sure


class AutoAttackFast(AutoAttack):
    """``autoattack-fast``: APGD-CE -> APGD-T (9 targets) -> Square (1000 queries, its
    schedule compressed to that budget), each on the points still robust. Not
    AutoAttack: FAB-T is left out and Square has a fifth of the standard budget, so it is
    weaker by construction and its robust accuracy may sit above the standard
    version's (``docs/benchmarks.md`` measures its speed and agreement against the
    official code). Same settings and details as :class:`AutoAttack`. Studies and papers
    should use the standard version."""

    name = "autoattack-fast"
    default_attacks = ("apgd-ce", "apgd-t", "square")
    default_square_queries = 1000
    rescale_schedule = True
