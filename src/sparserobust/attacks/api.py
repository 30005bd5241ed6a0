"""One call from a checkpoint to robustness numbers: load, attack the test split, summarise."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sparserobust.attacks.norms import INF
from sparserobust.attacks.registry import get_attack
from sparserobust.errors import ConfigError
from sparserobust.settings import check_value

DEFAULT_EPSILONS: dict[tuple[str, float], tuple[float, ...]] = {
    ("cifar10", INF): (2 / 255, 4 / 255, 8 / 255),
    ("cifar10", 2.0): (0.25, 0.5, 1.0),
    ("*", INF): (0.05, 0.1, 0.2, 0.3),
    ("*", 2.0): (0.5, 1.0, 2.0),
}
"""Epsilons (l_inf or l2, [0,1] pixel units) a fixed-epsilon attack uses when none
are given: the paper's MNIST and CIFAR-10 l_inf grids, and an l2 grid."""


def default_epsilons(dataset: str, norm: float) -> tuple[float, ...]:
    """The default epsilon grid for ``dataset`` and ``norm`` (see :data:`DEFAULT_EPSILONS`)."""
    return DEFAULT_EPSILONS.get((dataset, norm), DEFAULT_EPSILONS[("*", norm)])


def attack_checkpoint(
    path: str | os.PathLike[str],
    attack: str,
    *,
    norm: float | str | None = None,
    epsilons: Sequence[float] | None = None,
    n: int | None = 1000,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attack the first ``n`` test images of the checkpoint's dataset with
    ``attack`` (a registry name) and return :func:`sparserobust.metrics.summarize`'s
    dict plus ``checkpoint``, ``model`` and ``dataset``.

    Fixed-epsilon attacks use ``epsilons`` or the dataset's default grid;
    minimisation attacks report robust accuracy only at the given ``epsilons``.
    """
    from sparserobust.checkpoint import load_checkpoint
    from sparserobust.data import load_dataset
    from sparserobust.metrics.robustness import summarize
    from sparserobust.utils import resolve_device

    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    check_value("n", n, "--n")
    check_value("seed", seed, "--seed")
    atk = get_attack(attack, norm, **(params or {}))
    check_value("eps", None if epsilons is None else list(epsilons), "--eps", norm=atk.norm)
    model, meta = load_checkpoint(path, device=resolve_device(device))
    test = load_dataset(meta["dataset"], data_dir).test.head(n)
    eps = epsilons
    if atk.fixed_epsilon and eps is None:
        eps = default_epsilons(meta["dataset"], atk.norm)
    result = atk.run(
        model,
        test.x,
        test.y,
        epsilons=eps if atk.fixed_epsilon else None,
        seed=seed,
        num_classes=meta.get("num_classes"),
    )
    out = summarize(result, eps)
    out.update(checkpoint=str(path), model=meta.get("model"), dataset=meta.get("dataset"))
    return out


def format_summary(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines for a :func:`attack_checkpoint` summary."""

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    head = f"{summary['attack']} ({summary['norm']}) on {summary['n']} test images"
    if summary.get("model"):
        head += f" of {summary['model']}/{summary['dataset']}"
    lines = [
        head + f": {summary['seconds']:.1f}s",
        f"clean accuracy {summary['clean_accuracy']:.4f}",
    ]
    at = f" at eps {summary['at_epsilon']:g}" if "at_epsilon" in summary else ""
    lines.append(
        f"success rate{at} {num(summary['success_rate'])}, median {summary['norm']} "
        f"{num(summary['median_norm'])}, rho {num(summary['rho'])}"
    )
    for eps, acc in summary.get("robust_accuracy", {}).items():
        lines.append(f"robust accuracy at eps {float(eps):g}: {acc:.4f}")
    return lines
