"""High-level Python API behind the CLI commands (train, evaluate)."""

from __future__ import annotations

import os
from typing import Any

import torch

from sparserobust.checkpoint import check_model_finite, load_checkpoint, save_checkpoint
from sparserobust.data import load_dataset
from sparserobust.errors import CheckpointError, ConfigError, ModelError
from sparserobust.models import build_model, model_spec
from sparserobust.pruning import SPARSITY_NOTE, sparsity_report
from sparserobust.rundir import check_output
from sparserobust.training import TrainSettings, evaluate_accuracy, train_model
from sparserobust.utils import resolve_device, seed_everything


def train_reference(
    model_name: str,
    dataset: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a dense ``model_name`` on ``dataset`` with the model's default recipe
    (overridable), evaluate it on the test split and, with ``out``, write a
    checkpoint (checked against the output-path policy before training,
    :func:`~sparserobust.rundir.check_output`). Returns the metadata record (accuracy
    is a fraction in [0,1])."""
    if out is not None:
        check_output(out, what="the checkpoint to write (--out)")
    spec = model_spec(model_name)
    config = TrainSettings(
        epochs=spec.epochs if epochs is None else epochs,
        lr=spec.lr if lr is None else lr,
        batch_size=spec.batch_size if batch_size is None else batch_size,
        weight_decay=spec.weight_decay,
        seed=seed,
    )
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir)
    info = data.info
    seed_everything(seed)
    model = build_model(model_name, info.input_shape, info.num_classes, info.mean, info.std).to(dev)
    train_model(model, data.train, config, progress=progress, desc=f"train {model_name}")
    accuracy = evaluate_accuracy(model, data.test)
    meta: dict[str, Any] = {
        "model": model_name,
        "dataset": dataset,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "seed": seed,
        "accuracy": accuracy,
        "train": config.as_dict(),
        "sparsity": 0.0,
        "method": "dense",
    }
    if out is not None:
        save_checkpoint(out, model, meta)
    return meta


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s logits for ``x`` in eval mode (on the model's device)."""
    from sparserobust.utils import eval_mode, forward, model_device

    with eval_mode(model):
        return forward(model, x.to(model_device(model)))


def check_input_shape(meta: dict[str, Any], shape: tuple[int, ...], path: object) -> None:
    """CheckpointError when a checkpoint's input shape differs from its dataset's."""
    if tuple(meta["input_shape"]) != tuple(shape):
        raise CheckpointError(
            f"{path} was built for input shape {tuple(meta['input_shape'])} but dataset "
            f"{meta['dataset']!r} has input shape {tuple(shape)}: use a checkpoint of this dataset"
        )


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Clean test accuracy and measured sparsity of the checkpoint at ``path``."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--n must be >= 1, got {limit}")
    model, meta = load_checkpoint(path, device=resolve_device(device))
    data = load_dataset(meta["dataset"], data_dir)
    check_input_shape(meta, data.info.input_shape, path)
    test = data.test.head(limit)
    check_model_finite(model, path)
    accuracy = evaluate_accuracy(model, test)
    logits = predict_logits(model, test.x[:256])
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(
            f"{path}: the model's logits are NaN or inf (a diverged model, or a zero "
            "normalisation std): its accuracy means nothing; re-create the checkpoint"
        )
    report = sparsity_report(model)
    return {
        "checkpoint": str(path),
        "model": meta["model"],
        "dataset": meta["dataset"],
        "accuracy": accuracy,
        "n": len(test),
        "sparsity": report.sparsity,
        "pruned_weights": report.pruned,
        "total_weights": report.total,
        "sparsity_note": SPARSITY_NOTE,
        "metadata": meta,
    }
