"""Which checkpoints can exact verification afford? A quick probe before sizing a study.

For each checkpoint and l_inf epsilon, on the first ``--n`` test images: IBP and CROWN
certified counts, unstable units per nonlinear layer under CROWN (ReLU: ``l < 0 < u``;
max-pool: windows with no dominating input), CROWN's seconds, and with ``--exact`` the
exact verdicts of :func:`sparserobust.measurements.verify.verify_points` (``--time-limit``
seconds per point): counts per status, mean MILP binaries, seconds per point. Prints a
markdown table; one thread.

    python benchmarks/verify_probe.py --data-dir ../shared/data \\
        --checkpoint runs/lenet5.st --checkpoint runs/lenet5-probe/magnitude-s0.9000.st \\
        --epsilons 0.02,0.05 --n 5 --exact
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.measurements.verify import verify_points
from sparserobust.verify import certify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epsilons", default="0.02,0.05")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--exact", action="store_true", help="also run the MILP")
    ap.add_argument("--time-limit", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    test = load_dataset(args.dataset, args.data_dir).test.head(args.n)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    head = "| checkpoint | eps | IBP cert. | CROWN cert. | unstable per layer (CROWN) | CROWN s |"
    sep = "| --- | --- | --- | --- | --- | --- |"
    if args.exact:
        head += " verified / counterex. / timeout / error | MILP binaries (mean) | s per point |"
        sep += " --- | --- | --- |"
    print(head)
    print(sep)
    for path in args.checkpoint:
        model, _ = load_checkpoint(path)
        for eps in epsilons:
            ibp = certify(model, test.x, test.y, epsilon=eps, method="ibp")
            start = time.perf_counter()
            crown = certify(model, test.x, test.y, epsilon=eps, method="crown")
            crown_s = time.perf_counter() - start
            unstable = " / ".join(f"{v:.0f}" for v in crown.unstable.float().mean(0).tolist())
            row = (
                f"| {Path(path).name} | {eps} | {int(ibp.certified.sum())}/{args.n} | "
                f"{int(crown.certified.sum())}/{args.n} | {unstable} | {crown_s:.1f} |"
            )
            if args.exact:
                start = time.perf_counter()
                rec = verify_points(model, test.x, test.y, epsilons=[eps], n_exact=args.n,
                                    time_limit=args.time_limit)  # fmt: skip
                seconds = (time.perf_counter() - start) / args.n
                ex = rec["epsilons"][0]["exact"]
                binaries = [p["binaries"] for p in ex["points"] if p["by"] == "milp"]
                mean_bin = f"{sum(binaries) / len(binaries):.0f}" if binaries else "-"
                counts = " / ".join(str(ex[s]) for s in ("verified", "counterexample",
                                                         "timeout", "error"))  # fmt: skip
                row += f" {counts} | {mean_bin} | {seconds:.1f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
