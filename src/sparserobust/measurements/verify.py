"""Certified and exact robustness: IBP and CROWN lower bounds, MILP exact decisions.

Switched on with ``eval.measurements: {verify: {epsilons: [...], ...}}``. Each model's
records then read as a bracket per epsilon: certified (IBP <= CROWN) <= exact <=
attacked (any attack's robust accuracy at the same epsilon).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparserobust.errors import ConfigError
from sparserobust.measurements.base import Cell, Measurement, Record, numbers

if TYPE_CHECKING:
    from sparserobust.config import EvalSettings


@dataclass(frozen=True)
class VerifySettings:
    """``epsilons``: radii in [0,1] pixel space; ``norm``: ``inf`` or ``2``; ``n``: points
    certified by IBP and CROWN (default: ``eval.n``); ``n_exact``: the first points
    decided exactly by MILP (l_inf only; 0 turns it off); ``time_limit``: seconds per
    point for building and solving its MILP before it counts as a timeout (never as
    verified; the bounds come from the batched certification pass); ``tighten``: LP-tighten
    the MILP's big-M bounds."""

    epsilons: tuple[float, ...] = ()
    norm: str = "inf"
    n: int | None = None
    n_exact: int = 20
    time_limit: float = 30.0
    tighten: bool = False


class VerifyMeasurement(Measurement):
    """Certified robust accuracy (IBP, CROWN) on ``n`` points and exact robust
    accuracy (MILP; timeouts counted apart) on the first ``n_exact``, per epsilon."""

    name = "verify"
    description = "certified (IBP, CROWN) and exact (MILP) robust accuracy per epsilon"
    settings_type = VerifySettings

    def validate(self, settings: VerifySettings, eval_settings: EvalSettings, where: str) -> None:
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
        if not (math.isfinite(settings.time_limit) and settings.time_limit > 0):
            raise ConfigError(f"{where}.time_limit: must be > 0 seconds, got {settings.time_limit}")

    def cells(self, settings: VerifySettings, eval_settings: EvalSettings, seed: int) -> list[Cell]:
        n = min(settings.n or eval_settings.n, eval_settings.n)
        params = {**asdict(settings), "epsilons": list(settings.epsilons), "n": n, "seed": seed}
        return [Cell(self.name, f"verify:l{settings.norm}", params)]

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cell: Cell,
        batch_size: int,
    ) -> dict[str, Any]:
        from sparserobust.metrics.milp import verify_points

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
