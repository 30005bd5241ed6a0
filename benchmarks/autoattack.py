"""Our ``autoattack`` against the official AutoAttack code (pyautoattack), standard version.

For each checkpoint and norm, both run on the same first N test images, with the
same number of torch threads and the same batch size, seed 0. Reported per row:
wall-clock seconds of each, the speed ratio, both robust accuracies, the points
we call robust that the official code breaks (a bug on our side if > 0) and the
reverse, and which of our sub-attacks broke how many points. The official
adversarials are re-checked with the same forward pass as ours.

``--skip-certified`` also times ours with ``skip_certified=True`` on the same images
(CROWN skips the points it certifies after APGD-CE) and reports the certified count and
the points on which the two disagree; ``--no-official`` leaves the official code out.

``--fast`` also times our ``autoattack-fast`` (APGD-CE, APGD-T, Square with 1000
queries: not AutoAttack; ``--fast-only``: instead of the standard version) and reports
its speed-up over the official standard version and its robust accuracy against the
official one.

``--channels-last ours`` runs our attacks on the model in channels-last layout (as
studies with ``channels_last: true`` do; no effect on models without convolutions);
``--channels-last both`` hands the official code the same channels-last model.

``--min-linf-n M`` also compares the minimal-norm l_inf attacks on the first M
images: our FAB-l_inf (9 targets x 100 steps) against DeepFool-l_inf (median
l_inf norm over the correctly classified images, [0,1] pixel units).

    python benchmarks/autoattack.py --checkpoint lenet300.st --checkpoint lenet5.st \
        --data-dir data --n 1000 --threads 1 --json-out autoattack.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import torch

from sparserobust.attacks import FAB, AutoAttack, AutoAttackFast, DeepFool
from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.metrics import median_norm, success_rate
from sparserobust.utils import predict, use_channels_last


def rate(flags: torch.Tensor) -> float:
    return round(float(flags.float().mean()), 4)


def disagreement(
    who: str, flags: torch.Tensor, official: torch.Tensor | None
) -> dict[str, int | None]:
    """The points ``who`` calls robust that the official code breaks, and the reverse."""
    if official is None:
        return {f"{who}_robust_official_broken": None, f"official_robust_{who}_broken": None}
    return {
        f"{who}_robust_official_broken": int((flags & ~official).sum()),
        f"official_robust_{who}_broken": int((official & ~flags).sum()),
    }


def official_robust(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, bs: int
) -> tuple[torch.Tensor, float]:
    """Robust flags ``(N,)`` of the official standard AutoAttack and its wall time."""
    from pyautoattack import AutoAttack as Official

    start = time.perf_counter()
    official = Official(model, eps=eps, norm=norm, seed=0, version="standard", device="cpu")
    x_adv, _ = official.run_standard_evaluation(x, y, batch_size=bs)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        flags = model(x_adv).argmax(1) == y
    return flags, seconds


def run_ours(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    fast: bool = False,
    **kw: object,
) -> tuple[torch.Tensor, float, dict]:
    """Robust flags ``(N,)`` of our ``autoattack`` (``autoattack-fast`` if ``fast``) with
    settings ``kw``, its wall time and its details (``broken_by``, ``seconds_by_attack``)."""
    start = time.perf_counter()
    attack = (AutoAttackFast if fast else AutoAttack)(norm=norm, **kw)  # type: ignore[arg-type]
    res = attack.run(model, x, y, epsilons=[eps], seed=0)
    seconds = time.perf_counter() - start
    return res.clean_correct & ~res.success[0], seconds, res.details


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="repeatable")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=1000, help="first N test images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1000, help="for both implementations")
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--eps-l2", type=float, default=1.5)
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--min-linf-n", type=int, default=0, help="images for FAB vs DeepFool")
    ap.add_argument(
        "--skip-certified",
        action="store_true",
        help="also time ours with skip_certified=True (CROWN skips certified points)",
    )
    ap.add_argument("--fast", action="store_true", help="also time autoattack-fast")
    ap.add_argument("--fast-only", action="store_true", help="time autoattack-fast only")
    ap.add_argument(
        "--channels-last",
        choices=["none", "ours", "both"],
        default="none",
        help="run ours (or both) on the model in channels-last layout",
    )
    ap.add_argument("--no-official", action="store_true", help="time ours only")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.checkpoint:
        model, meta = load_checkpoint(path, device="cpu")
        model.eval()
        ours_model = model
        if args.channels_last != "none":
            ours_model = use_channels_last(copy.deepcopy(model))
        official_model = ours_model if args.channels_last == "both" else model
        test = load_dataset(meta["dataset"], args.data_dir).test.head(args.n)
        x, y = test.x, test.y
        if args.min_linf_n:
            xm, ym = x[: args.min_linf_n], y[: args.min_linf_n]
            for attack in (DeepFool(norm="inf"), FAB(norm="inf")):
                start = time.perf_counter()
                res = attack.run(model, xm, ym, seed=0)
                row = {
                    "model": meta.get("model"),
                    "attack": f"{attack.name}-linf",
                    "images": int(xm.shape[0]),
                    "seconds": round(time.perf_counter() - start, 2),
                    "success": round(success_rate(res), 4),
                    "median_linf": round(median_norm(res), 4),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
        for norm in [n for n in args.norms.split(",") if n]:
            eps = args.eps_linf if norm == "linf" else args.eps_l2
            if args.no_official:
                off_flags, off_s = None, math.nan
            else:
                off_flags, off_s = official_robust(
                    official_model, x, y, "Linf" if norm == "linf" else "L2", eps, args.batch_size
                )
            row: dict = {
                "model": meta.get("model"),
                "checkpoint": Path(path).name,
                "norm": norm,
                "eps": eps,
                "images": int(x.shape[0]),
                "threads": args.threads,
                "channels_last": args.channels_last,
                "clean_accuracy": round(float((y == predict(model, x)).float().mean()), 4),
                "official_robust_accuracy": None if off_flags is None else rate(off_flags),
                "official_seconds": round(off_s, 2),
            }
            if not args.fast_only:
                ours_flags, ours_s, details = run_ours(
                    ours_model, x, y, norm, eps, batch_size=args.batch_size
                )
                assert isinstance(details["broken_by"], list)
                row.update(
                    ours_robust_accuracy=rate(ours_flags),
                    ours_seconds=round(ours_s, 2),
                    speedup=round(off_s / ours_s, 2),
                    broken_by=dict(Counter(details["broken_by"][0])),
                    seconds_by_attack=details["seconds_by_attack"],
                    **disagreement("ours", ours_flags, off_flags),
                )
            if args.fast or args.fast_only:
                fast_flags, fast_s, fast_details = run_ours(
                    ours_model, x, y, norm, eps, fast=True, batch_size=args.batch_size
                )
                row.update(
                    fast_seconds=round(fast_s, 2),
                    fast_speedup=round(off_s / fast_s, 2),
                    fast_robust_accuracy=rate(fast_flags),
                    fast_seconds_by_attack=fast_details["seconds_by_attack"],
                    **disagreement("fast", fast_flags, off_flags),
                )
            if args.no_official:
                for key in [k for k in row if "official" in k or "speedup" in k]:
                    row[key] = None
            if args.skip_certified and not args.fast_only:
                flags2, skip_s, details2 = run_ours(
                    ours_model, x, y, norm, eps, batch_size=args.batch_size, skip_certified=True
                )
                assert isinstance(details2["broken_by"], list)
                codes = Counter(details2["broken_by"][0])
                row.update(
                    skip_certified_seconds=round(skip_s, 2),
                    skip_certified_speedup=round(ours_s / skip_s, 2),
                    skip_certified_robust_accuracy=rate(flags2),
                    certified_points=codes["certified"],
                    skip_robust_plain_broken=int((flags2 & ~ours_flags).sum()),
                    plain_robust_skip_broken=int((ours_flags & ~flags2).sum()),
                    skip_seconds_by_attack=details2["seconds_by_attack"],
                )
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
