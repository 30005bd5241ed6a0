"""Branch and bound against the MILP on the same points (requirement 7's time target).

Reads pairs of ``sparserobust verify --json`` files of one checkpoint, one run with
``--method milp`` and one with ``--method bab`` (same points, radius and cap), joins
their points by test-image index and prints per pair and over all pairs (JSON): both
methods' verdict counts, the points where both decide and disagree (must be none: both
are exact), and, on the points both decide *by a search* (the MILP's solver decided
them: not the clean check, CROWN or the attack, which both run first), each method's
median seconds, the ratio of the medians and the range of the per-point ratios.

    python benchmarks/bab_vs_milp.py \\
        --pair docs/results/bab/milp_vs_bab/magnitude-s0-milp.json \\
               docs/results/bab/milp_vs_bab/magnitude-s0-bab.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

DECIDED = ("verified", "counterexample")


def points(path: str) -> tuple[dict, dict[int, dict]]:
    data = json.loads(Path(path).read_text())
    if len(data["epsilons"]) != 1:
        raise SystemExit(f"error: {path}: one radius per file, got {len(data['epsilons'])}")
    return data, {int(p["index"]): p for p in data["epsilons"][0]["points"]}


def compare(milp_file: str, bab_file: str) -> dict:
    md, milp = points(milp_file)
    bd, bab = points(bab_file)
    if (md["method"], bd["method"]) != ("milp", "bab"):
        raise SystemExit(f"error: want a milp and a bab file, got {md['method']}, {bd['method']}")
    weights = md.get("weights_fingerprint"), bd.get("weights_fingerprint")
    if None in weights or weights[0] != weights[1] or set(milp) != set(bab):
        raise SystemExit(f"error: {milp_file} and {bab_file} decide other weights or points")
    both = [i for i in milp if milp[i]["status"] in DECIDED and bab[i]["status"] in DECIDED]
    searched = [i for i in both if milp[i]["by"] == "milp"]
    return {
        "milp": Counter(f"{p['status']} by {p['by']}" for p in milp.values()),
        "bab": Counter(f"{p['status']} by {p['by']}" for p in bab.values()),
        "both_decide": len(both),
        "disagree": [i for i in both if milp[i]["status"] != bab[i]["status"]],
        "searched": searched,
        "milp_s": [milp[i]["seconds"] for i in searched],
        "bab_s": [bab[i]["seconds"] for i in searched],
    }


def summary(milp_s: list[float], bab_s: list[float]) -> dict:
    if not milp_s:
        return {"points": 0}
    ratios = sorted(m / max(b, 1e-9) for m, b in zip(milp_s, bab_s, strict=True))
    mm, mb = statistics.median(milp_s), statistics.median(bab_s)
    return {
        "points": len(milp_s),
        "milp_median_s": round(mm, 4),
        "bab_median_s": round(mb, 4),
        "ratio_of_medians": round(mm / mb, 2),
        "per_point_ratio": {
            "min": round(ratios[0], 2),
            "median": round(statistics.median(ratios), 2),
            "max": round(ratios[-1], 2),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True,
                    metavar=("MILP_JSON", "BAB_JSON"))  # fmt: skip
    args = ap.parse_args()
    out, all_m, all_b = {}, [], []
    for milp_file, bab_file in args.pair:
        c = compare(milp_file, bab_file)
        all_m += c["milp_s"]
        all_b += c["bab_s"]
        out[Path(bab_file).stem] = {
            "milp": dict(c["milp"]), "bab": dict(c["bab"]), "both_decide": c["both_decide"],
            "disagree": c["disagree"], **summary(c["milp_s"], c["bab_s"]),
        }  # fmt: skip
    out["all"] = summary(all_m, all_b)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
