"""Train and evaluate loops: SGD with momentum, cosine schedule, seeded, progress bar."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparserobust.data import Split
from sparserobust.errors import ConfigError
from sparserobust.utils import model_device, predict, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train_model`.

    ``schedule`` is ``cosine`` (per step, to 0) or ``constant``. ``epochs`` may be
    0 (no training).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
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
        return asdict(self)


StepHook = Callable[[int, nn.Module], None]


def train_model(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    *,
    progress: bool = True,
    after_step: StepHook | None = None,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` in place on ``train`` with SGD + momentum.

    Deterministic on CPU for a fixed ``config.seed``: shuffling uses its own
    generator. ``after_step(step, model)`` runs after every optimiser step
    (pruning methods use it to update masks). Returns the model in train mode.
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
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if after_step is not None:
                after_step(step, model)
            running += loss.item()
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{running / steps_per_epoch:.4f}")
        log.debug("%s epoch %d loss %.4f", desc, epoch + 1, running / steps_per_epoch)
    bar.close()
    log.info("%s: %d epochs in %.1fs", desc, config.epochs, time.perf_counter() - start)
    return model


def evaluate_accuracy(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Clean top-1 accuracy (a fraction in [0,1]) of ``model`` on ``split``, in eval mode."""
    if len(split) == 0:
        raise ConfigError("cannot evaluate on an empty split")
    pred = predict(model, split.x, batch_size)
    return float((pred == split.y.cpu()).float().mean())
