"""Checkpoints: safetensors files with sparserobust metadata, masks included.

A checkpoint holds the model's ``state_dict`` as tensors (never pickles, so
loading cannot run code) and a JSON metadata record in the safetensors header:
model name, dataset, input shape, classes, normalisation, seed, accuracy,
library version, and whatever pruning adds (method, sparsity, parent).
Pruned layers are stored as ``weight_orig`` + ``weight_mask`` exactly as
``torch.nn.utils.prune`` keeps them, and restored the same way.

A compact export (``sparserobust compact``: a structurally pruned model with
its removed units physically dropped) has layer sizes no registered model
has; its metadata carries the architecture as a layer list under
``compact.layers`` (see :mod:`sparserobust.models.compact`), and
:func:`load_checkpoint` rebuilds it from there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from sparserobust.errors import CheckpointError, StoreError
from sparserobust.models import build_model
from sparserobust.utils import atomic_write

FORMAT = "sparserobust-checkpoint"
FORMAT_VERSION = 2
"""Version 1 (pre-release) kept format, version and meta as three header keys."""
HEADER_KEY = "sparserobust"
REQUIRED_META = ("model", "dataset", "input_shape", "num_classes", "mean", "std")


def _version() -> str:
    from sparserobust.version import __version__

    return __version__


def save_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, metadata: dict[str, Any]
) -> Path:
    """Atomically write ``model``'s state and ``metadata`` to ``path`` (safetensors).

    ``metadata`` must hold at least model, dataset, input_shape, num_classes,
    mean and std (what :func:`load_checkpoint` needs to rebuild the model); any
    other JSON-serialisable entries are kept. Returns the path written.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_META if k not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
    meta = dict(metadata)
    meta.setdefault("sparserobust_version", _version())
    try:
        # One header key: safetensors writes its metadata map in hash order, so several
        # keys would make the file bytes (and its SHA-256) differ between processes.
        header = json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta},
            sort_keys=True,
            allow_nan=True,
        )
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata={HEADER_KEY: header})
        except SafetensorError as exc:  # disk full, file size limit: never a traceback
            raise StoreError(
                f"cannot write checkpoint {path} ({str(exc).splitlines()[0][:120]}): "
                "check free space and permissions, then re-run (finished work is kept)"
            ) from None

    return atomic_write(path, write)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata record of checkpoint ``path`` without loading its tensors."""
    return _open(path)[1]


def _open(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist: check the path")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{p} is not a valid sparserobust checkpoint (unreadable safetensors: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "create one with `sparserobust train`"
        ) from None
    if HEADER_KEY not in header and header.get("format") == FORMAT:
        raise CheckpointError(
            f"{p} was written by an older sparserobust (checkpoint format "
            f"{header.get('format_version')}); re-create it with this version"
        )
    if HEADER_KEY not in header:
        raise CheckpointError(
            f"{p} is a safetensors file but not a sparserobust checkpoint; "
            "create one with `sparserobust train`"
        )
    try:
        record = json.loads(header[HEADER_KEY])
        meta = record["meta"]
        assert isinstance(meta, dict) and record["format"] == FORMAT
    except Exception:
        raise CheckpointError(f"{p} has corrupt checkpoint metadata: re-create it") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has checkpoint format {record.get('format_version')}, this sparserobust "
            f"reads format {FORMAT_VERSION}: upgrade sparserobust or re-create the checkpoint"
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{p} metadata lacks {', '.join(missing)}: re-create it")
    return tensors, meta


def apply_masks_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Re-create ``torch.nn.utils.prune`` masks on ``model`` for every ``*_mask`` in ``state``."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        if not key.endswith("_mask"):
            continue
        module_name, _, attr = key.rpartition(".")
        param = attr[: -len("_mask")]
        module = modules.get(module_name)
        if module is None or not hasattr(module, param):
            raise CheckpointError(
                f"checkpoint has a mask for {key} but the model has no such parameter: "
                "it was saved from another architecture"
            )
        expected = tuple(getattr(module, param).shape)
        if tuple(value.shape) != expected:
            raise CheckpointError(
                f"checkpoint mask {key} has shape {tuple(value.shape)} but the layer's "
                f"{param} has shape {expected}: the file is damaged; re-create it"
            )
        if prune.is_pruned(module) and hasattr(module, param + "_mask"):
            continue
        prune.custom_from_mask(module, param, torch.ones_like(value))


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load checkpoint ``path``: the model (eval mode, [0,1] inputs) and its metadata.

    Pruned models come back with their ``torch.nn.utils.prune`` masks, exactly
    as saved. Raises :class:`CheckpointError` for a file that is not a valid
    sparserobust checkpoint or does not fit the architecture it names.
    """
    tensors, meta = _open(path)
    model: nn.Module
    try:
        if isinstance(meta.get("compact"), dict):
            from sparserobust.models.compact import build_sequential

            model = build_sequential(meta["compact"]["layers"])
        else:
            model = build_model(
                meta["model"], meta["input_shape"], meta["num_classes"], meta["mean"], meta["std"]
            )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild model {meta.get('model')!r}: {exc}"
        ) from None
    apply_masks_from_state(model, tensors)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(
            f"{path} does not fit architecture {meta['model']!r} ({first}); "
            "the file was saved from another model"
        ) from None
    model.to(device)
    _refresh_pruned_weights(model)
    model.eval()
    return model, meta


def check_finite_tensors(tensors: dict[str, torch.Tensor], where: object) -> None:
    """CheckpointError unless every float tensor is finite and every ``*_mask`` holds
    only 0 and 1 (what a damaged, diverged or hand-edited checkpoint fails)."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{where}: tensor {key} holds NaN or inf values (the model diverged or the "
                "file was damaged): re-create it with a lower learning rate"
            )
        if key.endswith("_mask") and not bool(((value == 0) | (value == 1)).all()):
            raise CheckpointError(
                f"{where}: mask {key} holds values other than 0 and 1: re-create it"
            )


def check_model_finite(model: nn.Module, where: object) -> None:
    """CheckpointError when any parameter or buffer of ``model`` is NaN or inf."""
    check_finite_tensors(dict(model.state_dict()), where)


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load checkpoint ``path`` fully and check it: it rebuilds its model, its masks
    fit their layers, every weight is finite and every mask is 0/1. Returns its
    metadata; raises :class:`CheckpointError` (one line) otherwise."""
    tensors, meta = _open(path)
    check_finite_tensors(tensors, path)
    model, _ = load_checkpoint(path)
    del model
    return meta


def _refresh_pruned_weights(model: nn.Module) -> None:
    """Recompute each pruned ``weight`` from the loaded ``weight_orig`` and mask.

    ``prune`` caches ``weight = weight_orig * mask`` as a plain attribute, computed
    when the mask was created (here: from the freshly built model) and refreshed
    only before a forward pass; without this, code reading ``module.weight``
    right after loading would see the random initial weights.
    """
    from sparserobust.pruning.masks import refresh_pruned_weights

    refresh_pruned_weights(model)
