"""Train and evaluate loops: SGD with momentum, cosine schedule, seeded, progress bar.

Training is natural (cross-entropy on clean inputs) or adversarial
(:class:`AdversarialTrainingSettings`): PGD adversarial training (Madry et al. 2018)
or TRADES (Zhang et al. 2019), with perturbations in an l_inf or l2 ball of
radius ``eps`` in [0,1] pixel space.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparserobust.attacks.base import loss_and_grad
from sparserobust.attacks.norms import expand_like, lp_norms, project
from sparserobust.attacks.pgd import random_start
from sparserobust.data import Split
from sparserobust.deprecation import renamed_attribute
from sparserobust.errors import ConfigError, ModelError, NormError
from sparserobust.norms import norm_key, parse_norm
from sparserobust.utils import eval_mode, model_device, predict, seed_everything

log = logging.getLogger(__name__)


ADV_METHODS = ("pgd", "trades")


@dataclass(frozen=True)
class AdversarialTrainingSettings:
    """Settings of adversarial training (used by :func:`train_model` when set).

    * ``method``: ``pgd`` (Madry et al. 2018: minimise the cross-entropy on PGD
      examples) or ``trades`` (Zhang et al. 2019: cross-entropy on clean inputs
      plus ``beta`` times KL(f(x) || f(x')), x' maximising that KL).
    * ``eps``: radius of the l_p ball in [0,1] pixel space (e.g. 0.1 for MNIST l_inf).
    * ``steps``: gradient steps of the inner maximisation, each of size
      ``rel_stepsize * eps`` (default ``2.5 / steps``, Madry et al.'s rule, as the
      PGD attack); l_inf steps follow the gradient sign, l2 steps the normalised
      gradient, each followed by projection onto the ball and the [0,1] box.
    * ``beta``: weight of the TRADES KL term (6.0 in the TRADES paper); required
      for ``trades``, ignored by ``pgd``.
    * ``norm``: ``inf`` or ``2``.

    PGD examples start from a uniform random point of the ball; TRADES starts
    at ``x + 0.001 * N(0, I)`` as its reference code does. Examples are made
    with the model in eval mode; the loss is then taken in train mode.
    """

    method: str
    eps: float
    steps: int
    beta: float | None = None
    norm: str = "inf"
    rel_stepsize: float | None = None

    def __post_init__(self) -> None:
        method = str(self.method).strip().lower()
        if method not in ADV_METHODS:
            raise ConfigError(f"adversarial method must be pgd or trades, got {self.method!r}")
        object.__setattr__(self, "method", method)
        if not _finite_number(self.eps) or self.eps <= 0:
            raise ConfigError(
                f"adversarial eps must be a number > 0 (ball radius in [0,1] pixels), "
                f"got {self.eps!r}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"adversarial steps must be an integer >= 1, got {self.steps!r}")
        try:
            norm = norm_key(self.norm)
        except NormError:
            raise ConfigError(f"adversarial norm must be inf or 2, got {self.norm!r}") from None
        object.__setattr__(self, "norm", norm)
        if method == "trades" and self.beta is None:
            raise ConfigError(
                "trades needs beta, the weight of its KL term (6.0 in the TRADES paper): "
                "set adversarial beta"
            )
        if self.beta is not None and (not _finite_number(self.beta) or self.beta < 0):
            raise ConfigError(f"adversarial beta must be a number >= 0, got {self.beta!r}")
        if self.rel_stepsize is not None and (
            not _finite_number(self.rel_stepsize) or self.rel_stepsize <= 0
        ):
            raise ConfigError(
                f"adversarial rel_stepsize must be a number > 0, got {self.rel_stepsize!r}"
            )

    @property
    def p(self) -> float:
        """The norm as a number: ``math.inf`` or 2.0."""
        return parse_norm(self.norm)

    @property
    def step_size(self) -> float:
        """Size of one inner step in [0,1] pixel units: ``rel_stepsize * eps``."""
        rel = self.rel_stepsize if self.rel_stepsize is not None else 2.5 / self.steps
        return rel * self.eps

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdversarialTrainingSettings:
        """Build from a config mapping; one-line ConfigError for unknown or missing keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown adversarial setting(s) {', '.join(unknown)}: "
                f"use {', '.join(sorted(known))}"
            )
        missing = [k for k in ("method", "eps", "steps") if k not in values]
        if missing:
            raise ConfigError(f"adversarial training needs {', '.join(missing)}")
        return cls(**dict(values))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ce_per_sample(labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: F.cross_entropy(logits, labels, reduction="none")


def _kl_per_sample(p_clean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """KL(p_clean || softmax(logits)) per sample, shape (N,)."""
    return lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)


def _ascend(
    model: nn.Module,
    x: torch.Tensor,
    start: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    settings: AdversarialTrainingSettings,
) -> torch.Tensor:
    """``settings.steps`` projected gradient-ascent steps on ``loss_fn`` from ``start``."""
    p, step = settings.p, settings.step_size
    x_adv = project(x, start, p, settings.eps)
    for _ in range(settings.steps):
        _, _, grad = loss_and_grad(model, x_adv, loss_fn)
        if p == math.inf:
            x_adv = x_adv + step * grad.sign()
        else:
            x_adv = x_adv + step * grad / expand_like(lp_norms(grad, 2).clamp_min(1e-12), grad)
        x_adv = project(x, x_adv, p, settings.eps)
    return x_adv.detach()


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AdversarialTrainingSettings,
    gen: torch.Generator,
) -> torch.Tensor:
    """Training-time adversarial inputs for a batch ``x`` ``(N, ...)`` in [0,1].

    ``pgd``: maximise the cross-entropy to ``y`` from a uniform random start in
    the ball; ``trades``: maximise KL(f(x) || f(x')) from ``x + 0.001 N(0, I)``.
    The model is in eval mode meanwhile (its mode is restored); no parameter
    gradients are accumulated. Returns detached inputs in the ball and the box.
    """
    with eval_mode(model):
        if settings.method == "pgd":
            start = random_start(x, settings.p, settings.eps, gen)
            return _ascend(model, x, start, _ce_per_sample(y), settings)
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        start = (x + 0.001 * noise).clamp(0.0, 1.0)
        return _ascend(model, x, start, _kl_per_sample(p_clean), settings)


def adversarial_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AdversarialTrainingSettings,
    gen: torch.Generator,
) -> torch.Tensor:
    """The scalar training loss of one batch under ``settings`` (model in train mode).

    ``pgd``: mean cross-entropy on the PGD examples. ``trades``: mean
    cross-entropy on ``x`` plus ``beta`` times the batch-mean KL(f(x) || f(x')).
    """
    x_adv = adversarial_examples(model, x, y, settings, gen)
    if settings.method == "pgd":
        return F.cross_entropy(model(x_adv), y)
    logits = model(x)
    kl = F.kl_div(
        F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
    )
    assert settings.beta is not None
    return F.cross_entropy(logits, y) + settings.beta * kl


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of :func:`train_model`.

    ``schedule`` is ``cosine`` (per step, to 0) or ``constant``. ``epochs`` may be
    0 (no training). ``adversarial`` (None: natural training) makes every step
    adversarial; a mapping is accepted and turned into :class:`AdversarialTrainingSettings`.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    seed: int = 0
    adversarial: AdversarialTrainingSettings | None = None

    def __post_init__(self) -> None:
        if isinstance(self.adversarial, Mapping):
            object.__setattr__(
                self, "adversarial", AdversarialTrainingSettings.from_dict(self.adversarial)
            )
        if self.adversarial is not None and not isinstance(
            self.adversarial, AdversarialTrainingSettings
        ):
            raise ConfigError(
                "adversarial must be AdversarialTrainingSettings or None, "
                f"got {type(self.adversarial).__name__}"
            )
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be cosine or constant, got {self.schedule!r}")

    def as_dict(self) -> dict[str, object]:
        """Plain dict of the settings; ``adversarial`` only when set (so natural
        configs keep the dict, and hashes, they had before it existed)."""
        out = asdict(self)
        if self.adversarial is None:
            del out["adversarial"]
        return out


StepHook = Callable[[int, nn.Module], None]


def train_model(
    model: nn.Module,
    train: Split,
    config: TrainSettings,
    *,
    progress: bool = True,
    after_step: StepHook | None = None,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` in place on ``train`` with SGD + momentum.

    Deterministic on CPU for a fixed ``config.seed``: shuffling uses its own
    generator. ``after_step(step, model)`` runs after every optimiser step
    (pruning methods use it to update masks). With ``config.adversarial`` each
    batch is replaced by its adversarial loss (:func:`adversarial_loss`; the
    inner maximisation draws from its own generator seeded by ``config.seed``).
    Returns the model in train mode.
    """
    seed_everything(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = model_device(model)
    n = len(train)
    if n == 0:
        raise ConfigError("the training split is empty")
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = max(1, steps_per_epoch * config.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    if config.schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    adv = config.adversarial
    adv_gen = None
    if adv is not None:
        adv_gen = torch.Generator(device=device)
        adv_gen.manual_seed(config.seed + 1)
    model.train()
    step = 0
    bar = tqdm(total=config.epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb, yb = train.x[idx].to(device), train.y[idx].to(device)
            if adv is None:
                loss = F.cross_entropy(model(xb), yb)
            else:
                assert adv_gen is not None
                loss = adversarial_loss(model, xb, yb, adv, adv_gen)
            value = float(loss.item())
            if not math.isfinite(value):
                bar.close()
                raise ModelError(
                    f"{desc}: training diverged at step {step + 1} (loss {value}): "
                    "lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if after_step is not None:
                after_step(step, model)
            running += value
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{running / steps_per_epoch:.4f}")
        log.debug("%s epoch %d loss %.4f", desc, epoch + 1, running / steps_per_epoch)
    bar.close()
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ModelError(
            f"{desc}: training diverged (NaN or inf in {bad[0]}): lower the learning rate"
        )
    log.info("%s: %d epochs in %.1fs", desc, config.epochs, time.perf_counter() - start)
    return model


def evaluate_accuracy(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Clean top-1 accuracy (a fraction in [0,1]) of ``model`` on ``split``, in eval mode."""
    if len(split) == 0:
        raise ConfigError("cannot evaluate on an empty split")
    pred = predict(model, split.x, batch_size)
    return float((pred == split.y.cpu()).float().mean())


_RENAMED = {"TrainConfig": "TrainSettings", "AdversarialTraining": "AdversarialTrainingSettings"}
"""Old names of renamed classes (old -> new), importable with a DeprecationWarning."""


def __getattr__(name: str) -> Any:
    return renamed_attribute(__name__, globals(), _RENAMED, name)
