"""Auto-PGD (Croce & Hein 2020): APGD-CE, APGD-DLR and targeted APGD-T, l_inf and l2.

APGD is PGD with a step size that adapts itself: it starts at ``2 * eps``, is
halved at fixed checkpoints when the loss stopped improving, and the iterate then
restarts from the best point found so far. The update carries momentum 0.75.
Everything is per sample: a batch of points runs in lock-step, and a point
leaves the working batch as soon as one of its iterates is (clearly) adversarial.

Norms are measured in [0,1] pixel space on the flattened input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparserobust.attacks.base import FixedEpsilonAttack, clearly_adversarial, loss_and_grad
from sparserobust.attacks.norms import INF, expand_like, lp_norms, parse_norm, project
from sparserobust.errors import AttackError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``loss(logits (B, K), labels (B,), targets (B,) or None) -> (B,)``, to be *maximised*."""

MOMENTUM = 0.75
"""Weight of the new gradient step in the update (the paper's alpha); 0.25 goes to momentum."""


def checkpoints(steps: int) -> list[tuple[int, int]]:
    """The step-size checkpoints of APGD for a budget of ``steps`` iterations.

    Returns ``(iteration, window)`` pairs: after iteration ``iteration`` (0-based)
    the check looks back over the last ``window`` iterations. The first window is
    ``0.22 * steps`` iterations long, each next one ``0.03 * steps`` shorter, down
    to ``0.06 * steps`` (the paper's ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``).
    For 100 steps: iterations 21, 40, 56, 69, 79, 86, 92, 98.
    """
    window = max(int(0.22 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    minimum = max(int(0.06 * steps), 1)
    out: list[tuple[int, int]] = []
    done = window
    while done <= steps:
        out.append((done - 1, window))
        window = max(window - decrease, minimum)
        done += window
    return out


def ce(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy to the label (untargeted), or minus cross-entropy to the target."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), shift and scale invariant.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...``
    the sorted logits. Needs at least 3 (untargeted) or 4 (targeted) classes.
    """
    top = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        other = logits.scatter(1, labels[:, None], -torch.inf).amax(1)
        return -(own - other) / (top[:, 0] - top[:, 2] + 1e-12)
    tgt = logits.gather(1, targets[:, None]).squeeze(1)
    return -(own - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


@torch.no_grad()
def _predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's predicted classes ``(B,)`` on ``x``."""
    return model(x).argmax(1)


def _unit(v: torch.Tensor, p: float) -> torch.Tensor:
    """``v`` divided per sample by its l_p norm (p = inf or 2)."""
    return v / expand_like(lp_norms(v, p) + 1e-12, v)


class APGD(FixedEpsilonAttack):
    """APGD in an l_inf or l2 ball of radius eps ([0,1] pixel units), after
    Croce & Hein (ICML 2020, Algorithm 1), on the cross-entropy (``loss="ce"``,
    APGD-CE) or the DLR loss (``loss="dlr"``).

    Each run starts from a random point on the sphere of radius eps (l_inf: a
    uniform direction scaled to l_inf norm eps; l2: a Gaussian direction scaled
    to l2 norm eps), clipped to [0,1]. The step size starts at ``2 * eps``. An
    iteration takes the l_inf sign step (l2: normalised-gradient step) ``z``,
    projects it, and moves to ``x + 0.75 (z - x) + 0.25 (x - x_prev)`` (no
    momentum at the first iteration), projected onto the ball and the box.
    At each of the :func:`checkpoints` the step size of a sample is halved and
    its iterate restarts from its best point (highest loss) when either the
    loss increased in at most ``rho`` of the iterations since the last
    checkpoint, or the step size was not reduced at the last checkpoint and the
    best loss has not improved since. ``restarts`` re-runs the attack from a
    fresh random start on the points not yet broken.

    Points leave the working batch once an iterate is adversarial by the
    driver's safety margin. With ``target`` given to :meth:`Attack.run`, the CE
    loss is minus the cross-entropy to the target and DLR its targeted form.
    Defaults are AutoAttack's standard APGD-CE: 100 steps, 1 restart, rho 0.75.
    """

    name = "apgd"

    def __init__(
        self,
        norm: float | str = INF,
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(batch_size)
        self.norm = parse_norm(norm)
        self.steps = int(steps)
        self.loss = str(loss).lower()
        self.restarts = int(restarts)
        self.rho = float(rho)
        if self.steps < 1 or self.restarts < 1:
            raise AttackError(f"APGD needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
        if self.loss not in ("ce", "dlr"):
            raise AttackError(f"APGD loss must be 'ce' or 'dlr', got {loss!r}")
        if not 0.0 < self.rho <= 1.0:
            raise AttackError(f"APGD needs 0 < rho <= 1, got {rho}")

    def _loss_fn(self) -> LossFn:
        return ce if self.loss == "ce" else dlr

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        if targeted:  # labels are the targets; DLR measures them against the clean prediction
            own = _predicted(model, x)
            return self.restart_loop(model, x, own, labels, epsilon, gen, targeted=True)[0]
        return self.restart_loop(model, x, labels, None, epsilon, gen)[0]

    def restart_loop(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        gen: torch.Generator,
        targeted: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``restarts`` runs on the points still robust. Returns ``(points (B, ...),
        found (B,))``: the first adversarial iterate where one was found, else the
        highest-loss point. ``targeted`` makes success "predicted as ``targets``"
        instead of "not ``labels``"."""
        out = x.clone()
        out_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            tg = None if targets is None else targets[todo]
            adv, loss, found = self.run_once(model, x[todo], labels[todo], tg, eps, gen, targeted)
            better = found | (loss > out_loss[todo])
            out[todo[better]] = adv[better]
            out_loss[todo[better]] = torch.where(found, torch.inf, loss)[better]
            todo = todo[~found]
        broken = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        broken[todo] = False
        return out, broken

    def run_once(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        gen: torch.Generator,
        targeted: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run of ``steps`` iterations from a random start.

        Returns ``(points (B, ...), best loss (B,), found (B,))``: the adversarial
        iterate where ``found``, else the highest-loss iterate and its loss.
        """
        loss_fn = self._loss_fn()
        linf = self.norm == INF
        b = x0.shape[0]
        out = x0.clone()
        out_loss = torch.full((b,), -torch.inf, device=x0.device)
        found = torch.zeros(b, dtype=torch.bool, device=x0.device)
        idx = torch.arange(b, device=x0.device)

        start = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) * 2 - 1
        if not linf:
            start = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x = (x0 + eps * _unit(start, self.norm)).clamp(0.0, 1.0)
        xs, labs, tgts = x0, labels, targets
        succ_labels = targets if targeted else labels
        assert succ_labels is not None
        slabs = succ_labels

        def evaluate(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return loss_and_grad(model, z, lambda lg: loss_fn(lg, labs, tgts))

        logits, loss, grad = evaluate(x)
        x_best, loss_best, grad_best = x.clone(), loss.clone(), grad.clone()
        history = torch.empty(self.steps + 1, b, device=x0.device)  # loss at init, then per step
        history[0] = loss
        step = torch.full((b,), 2.0 * eps, device=x0.device)
        x_prev = x.clone()
        last_best = loss_best.clone()  # best loss at the previous checkpoint
        reduced = torch.ones(b, dtype=torch.bool, device=x0.device)  # halved there?
        marks = dict(checkpoints(self.steps))

        for it in range(-1, self.steps):
            if it >= 0:  # iteration `it`: one step, then loss and gradient at the new point
                direction = grad.sign() if linf else _unit(grad, 2)
                z = project(xs, x + expand_like(step, x) * direction, self.norm, eps)
                a = 1.0 if it == 0 else MOMENTUM
                x_new = project(xs, x + a * (z - x) + (1 - a) * (x - x_prev), self.norm, eps)
                x_prev, x = x, x_new
                logits, loss, grad = evaluate(x)
                history[it + 1] = loss
                improved = loss > loss_best
                x_best[improved] = x[improved]
                grad_best[improved] = grad[improved]
                loss_best = torch.where(improved, loss, loss_best)
                if it in marks:
                    window = marks[it]
                    ups = history[it + 2 - window : it + 2] > history[it + 1 - window : it + 1]
                    oscillating = ups.sum(0) <= self.rho * window
                    stalled = ~reduced & (last_best >= loss_best)
                    reduced = oscillating | stalled
                    last_best = loss_best.clone()
                    if bool(reduced.any()):
                        step = torch.where(reduced, step / 2, step)
                        x[reduced] = x_best[reduced]
                        grad[reduced] = grad_best[reduced]

            adv = clearly_adversarial(logits, slabs, targeted)
            if bool(adv.any()):
                out[idx[adv]] = x[adv]
                found[idx[adv]] = True
                keep = ~adv
                idx, xs, labs, slabs = idx[keep], xs[keep], labs[keep], slabs[keep]
                tgts = None if tgts is None else tgts[keep]
                x, x_prev, grad, step = x[keep], x_prev[keep], grad[keep], step[keep]
                x_best, loss_best, grad_best = x_best[keep], loss_best[keep], grad_best[keep]
                history, last_best, reduced = history[:, keep], last_best[keep], reduced[keep]
                if idx.numel() == 0:
                    return out, out_loss, found
        out[idx] = x_best
        out_loss[idx] = loss_best
        return out, out_loss, found


class APGDTargeted(APGD):
    """APGD-T: APGD on the targeted DLR loss against each of the ``n_target_classes``
    classes the model ranks highest after the true one (AutoAttack's standard
    version: 9 targets, 100 steps, 1 restart each), l_inf or l2, eps in [0,1] pixel units.

    The targets of a point are its 2nd, 3rd, ... highest clean logits; the
    attack runs them in that order, each on the points not yet broken. It is an
    untargeted attack overall (a point is broken when its prediction leaves the
    true label). With ``target`` given to :meth:`Attack.run` it instead runs
    ``restarts`` targeted-DLR runs against that target and succeeds only on it.
    Needs a model with at least 4 classes.
    """

    name = "apgd-t"

    def __init__(
        self,
        norm: float | str = INF,
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(norm, steps, "dlr", restarts, rho, batch_size)
        self.n_target_classes = int(n_target_classes)
        if self.n_target_classes < 1:
            raise AttackError(f"APGD-T needs n_target_classes >= 1, got {n_target_classes}")

    def attack_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        gen: torch.Generator,
        epsilon: float,
    ) -> torch.Tensor:
        with torch.no_grad():
            clean = model(x)
        k = clean.shape[1]
        if k < 4:
            raise AttackError(f"APGD-T's targeted DLR loss needs >= 4 classes, the model has {k}")
        if targeted:  # labels are the targets; DLR measures them against the clean prediction
            own = clean.argmax(1)
            return self.restart_loop(model, x, own, labels, epsilon, gen, targeted=True)[0]
        ranked = clean.argsort(dim=1, descending=True)
        out = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        for rank in range(1, min(self.n_target_classes, k - 1) + 1):
            if todo.numel() == 0:
                break
            tg = ranked[todo, rank]
            adv, broken = self.restart_loop(model, x[todo], labels[todo], tg, epsilon, gen)
            out[todo] = adv
            todo = todo[~broken]
        return out
