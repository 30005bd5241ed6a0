"""Small shared helpers: seeding, device choice, atomic file writes, batching."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparserobust.errors import ConfigError, ModelError, StoreError


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA when present, else CPU; ``cpu``/``cuda[:i]`` as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available: use --device cpu")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for param in model.parameters():
        return param.device
    for buf in model.buffers():
        return buf.device
    return torch.device("cpu")


class _NCHWGrad(torch.autograd.Function):
    """Identity that hands a channels-last tensor forward and a contiguous (NCHW)
    gradient back, so callers of a channels-last model see ordinary tensors."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous()


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (_NCHWGrad.apply(x), *args[1:])
    return args


def use_channels_last(model: nn.Module) -> nn.Module:
    """Run ``model``'s 2-d convolutions in channels-last memory layout, in place.

    On CPU this halves the time of a LeNet-5 forward + input-gradient pass
    (``benchmarks/channels_last.py``). Inputs and input gradients stay ordinary
    contiguous NCHW tensors, and module names and state dict are unchanged. The
    numbers differ from the default layout in float32 rounding, so iterative attacks
    can end differently on a few points (as with another thread count). Models
    without Conv2d layers are returned unchanged.
    """
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.register_forward_pre_hook(_channels_last_input)
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block and restore its former mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def shape_error(model: nn.Module, x: torch.Tensor, exc: RuntimeError) -> ModelError:
    """A one-line ModelError for a model that cannot take inputs shaped like ``x``."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ModelError(
        f"the model cannot take inputs of input shape {tuple(x.shape[1:])} ({first}): "
        "check that the model was built for this dataset"
    )


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, turning a shape mismatch inside the model into a :class:`ModelError`."""
    try:
        return model(x)
    except RuntimeError as exc:
        if "shape" in str(exc) or "size" in str(exc):
            raise shape_error(model, x, exc) from None
        raise


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels (int64, on CPU) of ``model`` for inputs ``x``, in eval mode."""
    device = model_device(model)
    out = []
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            out.append(forward(model, x[i : i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temp file beside ``path``,
    which is then fsynced and renamed over ``path``. A crash leaves either the
    old file or the new one, never a half-written file under ``path``."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise StoreError(
            f"cannot write into {parent} ({exc.strerror}): choose a writable folder"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(
            f"cannot write {target} ({exc.strerror}): check free space and permissions"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target
