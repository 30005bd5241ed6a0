"""Certified and exact robustness: IBP and CROWN lower bounds, MILP exact decisions.

Switched on with ``eval.measurements: {verify: {epsilons: [...], ...}}``. Each model's
records then read as a bracket per epsilon: certified (IBP <= CROWN) <= exact <=
attacked (any attack's robust accuracy at the same epsilon). :func:`verify_points` is
the combination the measurement runs: bounds on every point, then a PGD pre-check and
the MILP (:mod:`sparserobust.verify`) on the first ``n_exact``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.measurements.base import EvalView, Measurement, MeasurementCell, Record, numbers
from sparserobust.settings import NEW_FIELD
from sparserobust.utils import eval_mode, model_device

EXACT_METHODS = ("milp", "bab")
"""What decides the points that CROWN and the PGD pre-check leave open."""

_BY = {
    "milp": ("clean", "attack", "crown", "milp"),
    "bab": ("clean", "attack", "crown", "alpha", "bab"),
}
"""The deciding steps a method's points report, in the order they run."""


@dataclass(frozen=True)
class VerifySettings:
    """``epsilons``: radii in [0,1] pixel space; ``norm``: ``inf`` or ``2``; ``n``: points
    certified by IBP and CROWN (default: ``eval.n``); ``n_exact``: the first points
    decided exactly by MILP (l_inf only; 0 turns it off); ``time_limit``: seconds per
    point for building and solving its MILP before it counts as a timeout (never as
    verified; the bounds come from the batched certification pass); ``tighten``: LP-tighten
    the MILP's big-M bounds; ``method``: what decides the points that neither CROWN nor
    the PGD pre-check settles: ``milp`` (one MILP per point) or ``bab`` (branch and
    bound with alpha/beta-CROWN bounds, much faster on dense nets: docs/verification.md).
    Each point records which step decided it (``clean``, ``attack``, ``crown``,
    ``alpha``, ``bab``, ``milp``)."""

    epsilons: tuple[float, ...] = ()
    norm: str = "inf"
    n: int | None = None
    n_exact: int = 20
    time_limit: float = 30.0
    tighten: bool = False
    method: str = field(default="milp", metadata=NEW_FIELD)


class VerifyMeasurement(Measurement):
    """Certified robust accuracy (IBP, CROWN) on ``n`` points and exact robust
    accuracy (MILP; timeouts counted apart) on the first ``n_exact``, per epsilon."""

    name = "verify"
    description = "certified (IBP, CROWN) and exact (MILP) robust accuracy per epsilon"
    settings_type = VerifySettings

    def validate(self, settings: VerifySettings, eval_settings: EvalView, where: str) -> None:
        if not settings.epsilons:
            raise ConfigError(f"{where}.epsilons: give at least one epsilon, e.g. [0.02, 0.05]")
        for i, e in enumerate(settings.epsilons):
            if not (math.isfinite(e) and 0 < e <= 1):
                raise ConfigError(f"{where}.epsilons[{i}]: must be in (0, 1], got {e}")
        if settings.norm not in ("inf", "2"):
            raise ConfigError(f"{where}.norm: must be inf or 2, got {settings.norm!r}")
        if settings.n is not None and settings.n < 1:
            raise ConfigError(f"{where}.n: must be >= 1, got {settings.n}")
        if settings.n_exact < 0:
            raise ConfigError(f"{where}.n_exact: must be >= 0, got {settings.n_exact}")
        if settings.n_exact and settings.norm != "inf":
            raise ConfigError(f"{where}.n_exact: exact verification is l_inf only; set it to 0")
        if settings.method not in EXACT_METHODS:
            raise ConfigError(
                f"{where}.method: must be {' or '.join(EXACT_METHODS)}, got {settings.method!r}"
            )
        if settings.tighten and settings.method != "milp":
            raise ConfigError(f"{where}.tighten: tightens the MILP only; drop it or use milp")
        if not (math.isfinite(settings.time_limit) and settings.time_limit > 0):
            raise ConfigError(f"{where}.time_limit: must be > 0 seconds, got {settings.time_limit}")

    def cells(
        self, settings: VerifySettings, eval_settings: EvalView, seed: int
    ) -> list[MeasurementCell]:
        n = min(settings.n or eval_settings.n, eval_settings.n)
        params = {**asdict(settings), "epsilons": list(settings.epsilons), "n": n, "seed": seed}
        if settings.method == "milp":
            del params["method"]  # the default: results stored before it existed keep their id
        return [MeasurementCell(self.name, f"verify:l{settings.norm}", params)]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: MeasurementCell,
        batch_size: int,
    ) -> dict[str, Any]:
        p = cell.params
        norm = str(p["norm"])
        out = verify_points(
            model,
            x,
            y,
            epsilons=[float(e) for e in p["epsilons"]],
            norm=norm,
            n_exact=int(p["n_exact"]),
            time_limit=float(p["time_limit"]),
            seed=int(p["seed"]),
            tighten=bool(p["tighten"]),
            batch_size=batch_size,
            method=str(p.get("method", "milp")),
        )
        tag = f"verify_l{norm}"
        records: list[Record] = []
        timing: dict[str, Any] = {}
        flags: list[str] = []
        for entry in out["epsilons"]:
            eps = float(entry["epsilon"])
            # wall times vary from run to run: kept apart from the numbers
            timing[f"{eps:g}"] = {
                "ibp_s": entry.pop("ibp_seconds", None),
                "crown_s": entry.pop("crown_seconds", None),
            }

            def rec(
                label: str, value: Any, metric: str, robust: bool = True, eps: float = eps
            ) -> None:
                v = math.nan if value is None else float(value)
                records.append(
                    Record(
                        f"{tag} {label}@{eps:g}" + ("" if robust else " (not robustness)"),
                        v,
                        metric,
                        self.name,
                        norm,
                        eps,
                        robustness=robust,
                        higher_is_better=True if robust else None,
                    )
                )

            rec("certified_acc ibp", entry["ibp_accuracy"], "certified_accuracy_ibp")
            rec("certified_acc crown", entry["crown_accuracy"], "certified_accuracy_crown")
            rec("unstable relus ibp", entry["unstable_relus_ibp_mean"], "unstable_relus_ibp", False)
            rec(
                "unstable relus crown",
                entry["unstable_relus_crown_mean"],
                "unstable_relus_crown",
                False,
            )
            exact = entry.get("exact")
            if exact:
                rec("exact robust_acc", exact["robust_accuracy"], "exact_robust_accuracy")
                rec(
                    "exact robust_acc upper",
                    exact["robust_accuracy_upper"],
                    "exact_robust_accuracy_upper",
                    False,
                )
                rec("resolved share", exact["resolved_share"], "resolved_share", False)
                rec("timeouts", exact.get("timeout", 0), "timeouts", False)
                timing[f"{eps:g}"] |= {
                    "median_s": exact.pop("seconds_median", None),
                    "p95_s": exact.pop("seconds_p95", None),
                    "milp_median_s": exact.pop("milp_seconds_median", None),
                    "milp_p95_s": exact.pop("milp_seconds_p95", None),
                }
                if exact.get("timeout", 0):
                    flags.append(
                        f"verify l{norm} eps {eps:g}: {exact['timeout']} of {exact['n']} points "
                        f"timed out after {p['time_limit']:g}s: the exact accuracy is a range "
                        f"[{exact['robust_accuracy']:.3f}, {exact['robust_accuracy_upper']:.3f}]"
                    )
        # solve times are wall-clock metadata, not numbers: they differ from run to run
        return numbers(records, flags, detail=out, solve_time=timing)


# -- the study's combination of bounds, attack pre-check and MILP ---------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def verify_points(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilons: Sequence[float],
    norm: float | str = "inf",
    n_exact: int = 20,
    time_limit: float = 30.0,
    seed: int = 0,
    tighten: bool = False,
    batch_size: int = 250,
    method: str = "milp",
) -> dict[str, Any]:
    """Certified (IBP, CROWN) and exact robust accuracy per epsilon, as a JSON-able dict.

    ``x``: ``(N, C, H, W)`` images in [0,1], ``y``: labels ``(N,)``; ``epsilons``:
    radii in [0,1] pixel space for ``norm`` (2 or inf). IBP and CROWN certify all
    N points. The first ``n_exact`` points are decided exactly (l_inf only): a
    misclassified point or a PGD adversarial (seeded by ``seed``, re-checked by
    our forward pass) is a counterexample, a CROWN-certified point is verified,
    the rest go to ``method`` (``milp``: the MILP; ``bab``: branch and bound) with
    ``time_limit`` seconds each.

    Per epsilon the record holds ``ibp_accuracy``/``crown_accuracy`` (fractions
    of N), mean unstable ReLUs per point under IBP and CROWN (and LP on the MILP
    points), and under ``exact``: counts per status, ``robust_accuracy``
    (verified / n_exact), its upper end ``robust_accuracy_upper`` ((n_exact -
    counterexamples) / n_exact; equal when nothing timed out), ``resolved_share``,
    the bracket on the exact subset (``crown_accuracy``, ``pgd_accuracy``),
    median and p95 of per-point seconds (all points and MILP points only), and
    per-point records.
    """
    from sparserobust.norms import parse_norm
    from sparserobust.verify import certify

    p = parse_norm(norm)
    eps_list = [float(e) for e in epsilons]
    if not eps_list or any(not (math.isfinite(e) and e >= 0) for e in eps_list):
        raise ConfigError("epsilons must be a non-empty list of finite numbers >= 0")
    n = int(x.shape[0])
    n_ex = max(0, min(int(n_exact), n))
    if n_ex and math.isfinite(p):
        raise ConfigError("exact verification handles l_inf only: set n_exact=0 for l2")
    if not (time_limit > 0):
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")
    if method not in EXACT_METHODS:
        raise ConfigError(f"unknown exact method {method!r}: use {' or '.join(EXACT_METHODS)}")
    device = model_device(model)
    record: dict[str, Any] = {
        "norm": "inf" if math.isinf(p) else "2",
        "n_points": n,
        "n_exact": n_ex,
        "time_limit_s": time_limit,
        "lp_tightening": tighten,
        "seed": seed,
        **({} if method == "milp" else {"method": method}),
        "epsilons": [],
    }
    with eval_mode(model):
        for eps in eps_list:
            ibp = certify(model, x, y, epsilon=eps, norm=norm, method="ibp", batch_size=batch_size)
            crown = certify(model, x, y, epsilon=eps, norm=norm, method="crown",
                            batch_size=batch_size, keep_bounds=n_ex)  # fmt: skip
            entry: dict[str, Any] = {
                "epsilon": eps,
                "clean_accuracy": float(crown.clean_correct.float().mean()) if n else math.nan,
                "ibp_accuracy": ibp.accuracy,
                "crown_accuracy": crown.accuracy,
                "ibp_seconds": round(ibp.seconds, 4),
                "crown_seconds": round(crown.seconds, 4),
                "unstable_relus_ibp_mean": float(crown.unstable_relus(ibp=True).float().mean()),
                "unstable_relus_crown_mean": float(crown.unstable_relus().float().mean()),
            }
            if n_ex:
                entry["exact"] = _exact_entry(
                    model, x[:n_ex].to(device), y[:n_ex].to(device), eps, crown, time_limit,
                    seed, tighten, method,
                )  # fmt: skip
            record["epsilons"].append(entry)
    return record


def _exact_entry(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, crown: Any,
    time_limit: float, seed: int, tighten: bool, method: str = "milp",
) -> dict[str, Any]:  # fmt: skip
    from sparserobust.verify import STATUSES
    from sparserobust.verify.methods import decide_exact

    n = x.shape[0]
    results, pgd = decide_exact(model, x, y, eps, crown, time_limit=time_limit, seed=seed,
                                tighten=tighten, search=method)  # fmt: skip
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    secs = [r.seconds for r in results]
    milp_secs = [r.seconds for r in results if r.by in ("milp", "bab", "alpha")]
    lp = [r.unstable["lp"] for r in results if "lp" in r.unstable]
    crown_sub = crown.certified[:n]
    return {
        "n": n,
        **counts,
        "robust_accuracy": counts["verified"] / n,
        "robust_accuracy_upper": (n - counts["counterexample"]) / n,
        "resolved_share": (counts["verified"] + counts["counterexample"]) / n,
        "crown_accuracy": float(crown_sub.float().mean()),
        "pgd_accuracy": float((pgd.clean_correct & ~pgd.success[0]).float().mean()),
        "by": {b: sum(r.by == b for r in results) for b in _BY[method]},
        "unstable_relus_lp_mean": float(np.mean(lp)) if lp else None,
        "seconds_median": _percentile(secs, 50),
        "seconds_p95": _percentile(secs, 95),
        "milp_seconds_median": _percentile(milp_secs, 50),
        "milp_seconds_p95": _percentile(milp_secs, 95),
        "points": [r.as_dict() for r in results],
    }
