"""How far branch and bound's timeouts are from a proof, and how fast that gap closes
(docs/verification.md, "How far the undecided points are from a proof").

For each point, ``verify_bab`` runs once per time limit in ``--limits`` (a fresh search
each time; the search is deterministic, so a longer run extends the shorter one's), one
thread, no PGD pre-check (``BabSettings(pgd_steps=0)``: the search's own cost). A
timeout's ``margin_lower`` is the lowest bound of the domains left open: a proof needs it
above 0. Prints one JSON line per point and limit (status, margin_lower, domains,
seconds), then per point the gap's change per doubling of the domains bounded, and the
doublings a proof would need at that rate.

    OMP_NUM_THREADS=1 python benchmarks/bab_gap.py \\
        --checkpoint runs/verify_bab_pruned/checkpoints/s0/dense.st \\
        --points 0,2,4,5 --eps 0.05 --limits 15,30,60,120
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.verify.bab import BabSettings, verify_bab


def per_doubling(rows: list[dict]) -> float | None:
    """Least-squares slope of margin_lower against log2(domains) over a point's timeouts
    (logits gained per doubling of the domains), or None with fewer than two."""
    pts = [(math.log2(r["domains"]), r["margin_lower"]) for r in rows
           if r["status"] == "timeout" and r["margin_lower"] is not None
           and r["domains"]]  # fmt: skip
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--points", required=True, help="comma-separated test-image indices")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--limits", default="15,30,60,120", help="seconds, comma-separated")
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    test = load_dataset(meta["dataset"], args.data_dir).test
    limits = [float(v) for v in args.limits.split(",")]
    for i in (int(v) for v in args.points.split(",")):
        rows = []
        for limit in limits:
            (r,) = verify_bab(model, test.x[i : i + 1], test.y[i : i + 1], epsilon=args.eps,
                              time_limit=limit, settings=BabSettings(pgd_steps=0))  # fmt: skip
            words = r.detail.split()
            row = {"point": i, "limit": limit, "status": r.status, "by": r.by,
                   "margin_lower": r.margin_lower, "seconds": round(r.seconds, 2),
                   "domains": int(words[0]) if words and words[0].isdigit() else 0}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
            if r.status != "timeout":
                break
        slope = per_doubling(rows)
        last = rows[-1]
        need = (-last["margin_lower"] / slope if slope and slope > 0 and last["status"] ==
                "timeout" and last["margin_lower"] is not None else None)  # fmt: skip
        print(json.dumps({"point": i, "gain_per_doubling": slope,
                          "doublings_to_proof": need}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
