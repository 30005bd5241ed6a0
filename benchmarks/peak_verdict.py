"""Is the 90% peak of LeNet-300-100 at l_inf 0.05 proven, refuted or open?

Reads the dense models' verdicts from the study of
``configs/mnist_lenet300_verify_bab.yaml`` (its run directory, ``--dense-run``: the first
100 test images) and every model's from ``sparserobust verify --json`` files
(``--files``, one per checkpoint and shard, named ``<method>-s<seed>.json``, dense
included; ``--start`` shards add test images), all at eps 0.05, decided by branch and
bound at the same cap. Points are joined by test-image index; an index seen twice for
one model, or models that do not cover the same indices, are errors. Per model:
verified, counterexample and timeout counts, and the exact robust accuracy's bracket
``[verified / n, 1 - counterexamples / n]``. On the 3-seed means: *proven* when a 90%
method's lower end is above dense's upper end, *refuted* when dense's lower end is above
the 90% method's upper end, else *open*. Prints JSON; ``--dump`` also writes the dense
points as JSON.

    python benchmarks/peak_verdict.py --dense-run runs/verify_bab \\
        --files docs/results/bab/peak/*.json docs/results/bab/peak200/*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sparserobust.store import ResultStore

EPS = 0.05


def summarise(points: list[dict]) -> dict:
    n = len(points)
    counts = {s: sum(p["status"] == s for p in points)
              for s in ("verified", "counterexample", "timeout", "error")}  # fmt: skip
    decided = [p["seconds"] for p in points
               if p["status"] in ("verified", "counterexample") and "seconds" in p]  # fmt: skip
    return {
        "n": n, **counts,
        "decided_share": (counts["verified"] + counts["counterexample"]) / n,
        "bracket": [counts["verified"] / n, 1 - counts["counterexample"] / n],
        "median_decided_s": round(statistics.median(decided), 2) if decided else None,
    }  # fmt: skip


def dense_points(run: Path) -> dict[int, list[dict]]:
    out = {}
    with ResultStore(run, create=False) as store:
        for r in store.results():
            if r["measurement"] != "verify:linf" or r["method"] != "dense":
                continue
            for entry in r["numbers"]["detail"]["epsilons"]:
                if abs(entry["epsilon"] - EPS) < 1e-12:
                    out[int(r["seed"])] = entry["exact"]["points"]
    return out


def join(points: dict[tuple[str, int], dict[int, dict]], key: tuple[str, int], new: list) -> None:
    """Add ``new`` points to model ``key``'s, by test-image index; a repeat is an error."""
    have = points.setdefault(key, {})
    for p in new:
        i = int(p["index"])
        if i in have:
            raise SystemExit(f"{key[0]} seed {key[1]}: test image {i} appears twice")
        have[i] = p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense-run", default="runs/verify_bab")
    ap.add_argument("--files", nargs="*", default=[], help="<method>-s<seed>.json verify files")
    ap.add_argument("--dump", default=None, help="write the dense points here (JSON)")
    args = ap.parse_args()
    points: dict[tuple[str, int], dict[int, dict]] = {}
    for seed, pts in dense_points(Path(args.dense_run)).items():
        join(points, ("dense", seed), pts)
    for f in map(Path, args.files):
        method, seed = f.stem.rsplit("-s", 1)
        data = json.loads(f.read_text())
        (entry,) = [e for e in data["epsilons"] if abs(e["epsilon"] - EPS) < 1e-12]
        join(points, (method, int(seed)), entry["points"])
    covered = {key: sorted(p) for key, p in points.items()}
    if len({tuple(v) for v in covered.values()}) > 1:
        spans = ", ".join(f"{m} s{s}: {len(v)} images ({v[0]}-{v[-1]})"
                          for (m, s), v in sorted(covered.items()))  # fmt: skip
        raise SystemExit(f"models cover different test images: {spans}")
    if args.dump:
        dense = {str(s): [p[i] for i in sorted(p)] for (m, s), p in points.items() if m == "dense"}
        Path(args.dump).write_text(json.dumps(dense))
    models: dict[str, dict[int, dict]] = {}
    for (method, seed), pts in sorted(points.items()):
        models.setdefault(method, {})[seed] = summarise([pts[i] for i in sorted(pts)])
    means = {
        name: [statistics.mean(m["bracket"][k] for m in per.values()) for k in (0, 1)]
        for name, per in models.items()
        if per
    }
    verdicts = {}
    for name, (lo, hi) in means.items():
        if name == "dense":
            continue
        d_lo, d_hi = means["dense"]
        verdicts[name] = "proven" if lo > d_hi else "refuted" if d_lo > hi else "open"
    print(json.dumps({"models": models, "mean_brackets": means, "peak": verdicts}, indent=1))


if __name__ == "__main__":
    main()
