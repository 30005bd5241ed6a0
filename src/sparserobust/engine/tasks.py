"""The work of a study, as functions a worker runs: train a dense model, sweep one
pruning method, run one measurement cell.

Each takes the study config and the run directory and returns plain data (never
touches the results store): only the driver writes the store. Checkpoints are
written atomically into the run directory (on a cluster it must be a shared
filesystem). They run the same in the driver (inline), in a local worker process
or in a Ray worker.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparserobust.checkpoint import load_checkpoint, save_checkpoint
from sparserobust.config import StudyConfig
from sparserobust.data import Dataset, load_dataset
from sparserobust.measurements import Cell, timed_run_cell
from sparserobust.models import build_model, model_spec
from sparserobust.pruning.sweep import sparsity_sweep
from sparserobust.rundir import checkpoint_path
from sparserobust.store import FRONT
from sparserobust.training import TrainConfig, evaluate_accuracy, train_model
from sparserobust.utils import resolve_device, seed_everything, use_channels_last

log = logging.getLogger(__name__)


def model_key(seed: int, method: str, target: float) -> str:
    """The store key of a model: ``s<seed>/<method>/<target sparsity, 4 decimals>``."""
    return f"s{seed}/{method}/{target:.4f}"


def dense_rel(seed: int) -> str:
    """The dense checkpoint of ``seed``, relative to the run directory."""
    return f"checkpoints/s{seed}/dense.st"


def dense_train_config(config: StudyConfig, seed: int, front: str | None = None) -> TrainConfig:
    """The dense recipe: the config's train settings over the model's defaults; with
    ``front`` (a :func:`~sparserobust.config.front_id`), that dense-front entry's
    overrides on top."""
    spec = model_spec(config.model)
    layers = [config.train]
    if front is not None:
        layers.append(config.control.front_models()[front])
    out = TrainConfig(
        epochs=spec.epochs,
        lr=spec.lr,
        batch_size=spec.batch_size,
        weight_decay=spec.weight_decay,
        seed=seed,
    )
    for t in layers:
        changes = {k: getattr(t, k) for k in TRAIN_FIELDS if getattr(t, k) is not None}
        out = dataclasses.replace(out, **changes)
    return out


TRAIN_FIELDS = ("epochs", "lr", "batch_size", "weight_decay", "adversarial")
"""The fields of :class:`~sparserobust.config.TrainSettings` that override a recipe."""


def front_key(seed: int, front: str) -> str:
    """The store key of seed ``seed``'s dense-front model ``front``."""
    return f"s{seed}/{FRONT}/{front}"


def front_rel(seed: int, front: str) -> str:
    """The checkpoint of a dense-front model, relative to the run directory."""
    digest = hashlib.sha256(front.encode()).hexdigest()[:12]
    return f"checkpoints/s{seed}/{FRONT}-{digest}.st"


def base_meta(config: StudyConfig, data: Dataset, seed: int) -> dict[str, Any]:
    """Checkpoint metadata shared by the dense model and every pruned one."""
    info = data.info
    return {
        "model": config.model,
        "dataset": config.dataset,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "seed": seed,
        "config_hash": config.config_hash(),
    }


def train_dense_checkpoint(
    config: StudyConfig,
    run_dir: Path,
    seed: int,
    data: Dataset,
    device: torch.device,
    progress: bool,
    front: str | None = None,
) -> tuple[float, float]:
    """Train seed ``seed``'s dense model (or its dense-front model ``front``) and save
    its checkpoint; (accuracy, seconds)."""
    start = time.perf_counter()
    seed_everything(seed)
    info = data.info
    model = build_model(config.model, info.input_shape, info.num_classes, info.mean, info.std).to(
        device
    )
    tc = dense_train_config(config, seed, front)
    what = "dense" if front is None else f"{FRONT} {front}"
    train_model(model, data.train, tc, progress=progress, desc=f"train {what} seed {seed}")
    acc = evaluate_accuracy(model, data.test)
    meta = {
        **base_meta(config, data, seed),
        "accuracy": acc,
        "method": "dense" if front is None else FRONT,
        "sparsity": 0.0,
        "train": tc.as_dict(),
    }
    if front is not None:
        meta["front"] = front
    rel = dense_rel(seed) if front is None else front_rel(seed, front)
    save_checkpoint(run_dir / rel, model, meta)
    return acc, time.perf_counter() - start


def sweep_checkpoints(
    config: StudyConfig,
    run_dir: Path,
    seed: int,
    method: str,
    data: Dataset,
    dense: nn.Module,
    progress: bool,
) -> list[dict[str, Any]]:
    """Prune a copy of ``dense`` over the grid with ``method`` (its settings from
    ``pruning.params``); one checkpoint per level, resuming after the last finished
    one. Returns the sweep records."""
    p = config.pruning
    dense_cfg = dense_train_config(config, seed)
    retrain = TrainConfig(
        epochs=p.retrain_epochs,
        lr=p.retrain_lr if p.retrain_lr is not None else dense_cfg.lr,
        seed=seed,
        batch_size=dense_cfg.batch_size,
        weight_decay=dense_cfg.weight_decay,
        adversarial=p.adversarial if p.adversarial is not None else config.train.adversarial,
    )
    return sparsity_sweep(
        copy.deepcopy(dense),
        method,
        list(p.grid(method)),
        train=data.train,
        test=data.test,
        retrain=retrain,
        seed=seed,
        chain=p.iterative,
        out_dir=run_dir / "checkpoints" / f"s{seed}" / method,
        metadata=base_meta(config, data, seed),
        parent="dense.st",
        progress=progress,
        settings=p.method_settings(method),
    )


_DATA: dict[tuple[str, str | None], Dataset] = {}


def study_data(config: StudyConfig) -> Dataset:
    """The study's dataset, loaded once per process."""
    key = (config.dataset, config.data_dir)
    if key not in _DATA:
        _DATA[key] = load_dataset(config.dataset, config.data_dir)
    return _DATA[key]


def model_to_measure(
    config: StudyConfig, run_dir: Path, checkpoint: str, device: torch.device
) -> nn.Module:
    """A stored model, ready for measurements (channels-last if the config asks); its
    path, read from the database, is confined to the run directory."""
    model, _ = load_checkpoint(checkpoint_path(run_dir, checkpoint), device=device)
    return use_channels_last(model) if config.channels_last else model


def task_dense(config: StudyConfig, run_dir: Path, seed: int) -> tuple[float, float]:
    """Train and save seed ``seed``'s dense model: (test accuracy, seconds)."""
    device = resolve_device(config.device)
    return train_dense_checkpoint(config, run_dir, seed, study_data(config), device, False)


def task_front(config: StudyConfig, run_dir: Path, seed: int, front: str) -> tuple[float, float]:
    """Train and save seed ``seed``'s dense-front model ``front``: (accuracy, seconds)."""
    device = resolve_device(config.device)
    return train_dense_checkpoint(config, run_dir, seed, study_data(config), device, False, front)


def task_sweep(config: StudyConfig, run_dir: Path, seed: int, method: str) -> list[dict[str, Any]]:
    """Sweep ``method`` from seed ``seed``'s dense checkpoint: the sweep records."""
    device = resolve_device(config.device)
    dense, _ = load_checkpoint(run_dir / dense_rel(seed), device=device)
    return sweep_checkpoints(config, run_dir, seed, method, study_data(config), dense, False)


def task_measure(
    config: StudyConfig, run_dir: Path, checkpoint: str, cell: Cell
) -> tuple[dict[str, Any], float]:
    """Run ``cell`` on the model in ``checkpoint``: (numbers, seconds)."""
    split = study_data(config).test.head(config.eval.n)
    model = model_to_measure(config, run_dir, checkpoint, resolve_device(config.device))
    return timed_run_cell(model, split.x, split.y, cell, config.eval.batch_size)


def task_noop(config: StudyConfig, run_dir: Path, value: Any) -> Any:
    """Return ``value``: measures the scheduling overhead of an executor."""
    return value
