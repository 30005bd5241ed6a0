"""High-level Python API behind the CLI commands (train, evaluate, verify)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from sparserobust.checkpoint import check_model_finite, load_checkpoint, save_checkpoint
from sparserobust.data import load_dataset
from sparserobust.errors import CheckpointError, ConfigError, ModelError
from sparserobust.models import build_model, model_spec
from sparserobust.pruning import SPARSITY_NOTE, sparsity_report
from sparserobust.pruning.sweep import state_fingerprint
from sparserobust.rundir import check_output
from sparserobust.settings import check_value
from sparserobust.training import TrainSettings, evaluate_accuracy, train_model
from sparserobust.utils import model_device, resolve_device, seed_everything


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
    for name, value in (("seed", seed), ("epochs", epochs), ("lr", lr), ("batch_size", batch_size)):
        check_value(name, value, f"--{name.replace('_', '-')}")
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
    check_value("n", limit, "--n")
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


def verify_checkpoint_points(
    path: str | os.PathLike[str],
    *,
    epsilons: Sequence[float],
    n: int = 100,
    start: int = 0,
    method: str | None = None,
    norm: str = "inf",
    time_limit: float = 30.0,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Decide test images ``start`` to ``start + n - 1`` (the first ``n`` by default)
    of the checkpoint at ``path`` at every radius
    of ``epsilons`` ([0,1] pixel space, ``norm`` ``inf`` or ``2``) with ``method`` (a
    name of :data:`~sparserobust.verify.methods.VERIFIERS`; None: the strongest for the
    norm). ``time_limit``: seconds per point of a complete method; ``seed``: its PGD
    pre-check. ``progress``: a tqdm bar over points x radii on stderr.

    Returns a JSON-able record: checkpoint, weights_fingerprint (digest of the tensors),
    model, dataset, method, complete, norm, n, start, time_limit_s, seed, clean_accuracy,
    seconds, and per radius under ``epsilons``: ``epsilon``, ``counts`` (every status of
    :data:`~sparserobust.verify.methods.POINT_STATUSES`, zeros included),
    ``verified_accuracy`` (verified / n: a proven lower bound of robust accuracy),
    ``robust_accuracy_upper`` ((n - counterexamples) / n: an upper bound), ``seconds``
    and ``points`` (one :meth:`~sparserobust.verify.methods.PointVerdict.as_dict` each).
    """
    from tqdm.auto import tqdm

    from sparserobust.verify.methods import POINT_STATUSES, decide_points, get_verifier
    from sparserobust.verify.network import parse_network

    verifier = get_verifier(method, norm)
    eps_list = [float(e) for e in epsilons]
    if not eps_list:
        raise ConfigError("--eps needs at least one radius, e.g. 0.02,0.05")
    check_value("eps", eps_list, "--eps", norm=norm)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    check_value("n", n, "--n")
    check_value("start", start, "--start")
    check_value("time_limit", time_limit, "--time-limit")
    check_value("seed", seed, "--seed")
    model, meta = load_checkpoint(path, device=resolve_device(device))
    check_model_finite(model, path)
    data = load_dataset(meta["dataset"], data_dir)
    check_input_shape(meta, data.info.input_shape, path)
    parse_network(model, data.info.input_shape)  # an unsupported model fails before any work
    if not 0 <= start < len(data.test):
        raise ConfigError(
            f"--start must be in [0, {len(data.test)}) (the test split's size), got {start}"
        )
    test = data.test.window(start, n)
    dev = model_device(model)
    x, y = test.x.to(dev), test.y.to(dev)
    clean = float((predict_logits(model, x).argmax(1) == y).float().mean())
    began = time.perf_counter()
    entries = []
    with tqdm(
        total=len(test) * len(eps_list), desc=f"verify {verifier.name}", disable=not progress
    ) as bar:
        for eps in eps_list:
            t0 = time.perf_counter()
            verdicts = decide_points(
                model, x, y, epsilon=eps, method=verifier.name, norm=norm,
                time_limit=time_limit, seed=seed, progress=bar.update,
            )  # fmt: skip
            counts = {s: sum(v.status == s for v in verdicts) for s in POINT_STATUSES}
            entries.append(
                {
                    "epsilon": eps,
                    "counts": counts,
                    "verified_accuracy": counts["verified"] / len(test),
                    "robust_accuracy_upper": (len(test) - counts["counterexample"]) / len(test),
                    "seconds": round(time.perf_counter() - t0, 4),
                    # index: the test image's index in the split (start + position)
                    "points": [{**v.as_dict(), "index": start + v.index} for v in verdicts],
                }
            )
    return {
        "checkpoint": str(path),
        # which weights were decided (the file's metadata aside): a checkpoint trained
        # from the same config on another CPU can differ (docs/design.md, "Reproducibility")
        "weights_fingerprint": state_fingerprint(model),
        "model": meta["model"],
        "dataset": meta["dataset"],
        "method": verifier.name,
        "complete": verifier.complete,
        "norm": norm,
        "n": len(test),
        "start": start,
        "time_limit_s": time_limit,
        "seed": seed,
        "clean_accuracy": clean,
        "seconds": round(time.perf_counter() - began, 4),
        "epsilons": entries,
    }


def format_verification(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for a :func:`verify_checkpoint_points` record."""
    kind = "complete" if result["complete"] else "sound, incomplete"
    lines = [
        f"{result['method']} ({kind}) l_{result['norm']} on {result['n']} test images of "
        f"{result['model']}/{result['dataset']}: clean accuracy {result['clean_accuracy']:.4f}, "
        f"{result['seconds']:.1f}s"
    ]
    for e in result["epsilons"]:
        c = e["counts"]
        shown = [f"{k.replace('_', ' ')} {v}" for k, v in c.items() if v or k == "verified"]
        lines.append(
            f"eps {e['epsilon']:g}: verified accuracy {e['verified_accuracy']:.4f}, robust "
            f"accuracy at most {e['robust_accuracy_upper']:.4f} ({', '.join(shown)}; "
            f"{e['seconds']:.1f}s)"
        )
        gaps = sorted(p["margin_lower"] for p in e["points"]
                      if p["status"] == "timeout" and p["margin_lower"] is not None)  # fmt: skip
        if gaps:  # how far the undecided points are from a proof
            lines.append(
                f"  timeouts: proven margin >= {gaps[len(gaps) // 2]:.3g} logits (median; "
                f"closest to a proof {gaps[-1]:.3g}, farthest {gaps[0]:.3g})"
            )
    return lines
