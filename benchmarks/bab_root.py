"""Per-point cost of branch and bound on the points a search decides (docs/verification.md,
"The root, made cheaper"): ``verify_bab`` with ``BabSettings(pgd_steps=0)`` (no attack:
the search's own cost) on the test images that a previous ``sparserobust verify --json``
run (``--from``) decided by ``--by`` (``bab``/``alpha``: the searched ones; ``milp``:
those the MILP's solver decided), one point at a time, one thread. Prints one JSON line
per point (status, by, seconds, domains) and a summary (verdicts, median, total).

    python benchmarks/bab_root.py \\
        --checkpoint runs/verify_bab_pruned/checkpoints/s0/magnitude/magnitude-s0.9000.st \\
        --from docs/results/bab/peak_milp/magnitude-s0.json --by milp
    python benchmarks/bab_root.py --checkpoint runs/verify_bab/checkpoints/s0/dense.st \\
        --from docs/results/bab/peak_dense_points_200.json --seed-key 0 --by bab,alpha \\
        --status verified --first 100

Compare two versions of the code by running it from two checkouts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.verify.bab import BabSettings, verify_bab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--from", dest="source", required=True, help="verify --json output")
    ap.add_argument("--seed-key", default=None, help="key of a {seed: points} JSON file")
    ap.add_argument("--by", default="bab,alpha", help="comma-separated deciders to select")
    ap.add_argument("--status", default=None, help="only points with this status")
    ap.add_argument("--first", type=int, default=None, help="only test images below this")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = json.loads(Path(args.source).read_text())
    points = data[args.seed_key] if args.seed_key is not None else data["epsilons"][0]["points"]
    wanted = set(args.by.split(","))
    idx = [int(p["index"]) for p in points if p["by"] in wanted
           and (args.status is None or p["status"] == args.status)
           and (args.first is None or int(p["index"]) < args.first)]  # fmt: skip
    model, meta = load_checkpoint(args.checkpoint, device=torch.device("cpu"))
    test = load_dataset(meta["dataset"], args.data_dir).test
    settings = BabSettings(pgd_steps=0)
    verify_bab(model, test.x[:1], test.y[:1], epsilon=args.eps, time_limit=5, settings=settings)
    seconds, verdicts = [], Counter()
    for i in idx:
        t0 = time.perf_counter()
        (r,) = verify_bab(model, test.x[i : i + 1], test.y[i : i + 1], epsilon=args.eps,
                          time_limit=args.time_limit, settings=settings, indices=[i])  # fmt: skip
        seconds.append(time.perf_counter() - t0)
        verdicts[f"{r.status} by {r.by}"] += 1
        row = {"index": i, "status": r.status, "by": r.by, "seconds": round(seconds[-1], 3)}
        print(json.dumps({**row, "detail": r.detail}), flush=True)
    print(json.dumps({"points": len(idx), "verdicts": dict(verdicts),
                      "median_s": round(statistics.median(seconds), 3) if seconds else None,
                      "total_s": round(sum(seconds), 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
