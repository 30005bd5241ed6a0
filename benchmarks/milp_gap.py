"""How fast a MILP solver closes the gap on a point branch and bound leaves open
(docs/verification.md, "How far the undecided points are from a proof").

Per point: CROWN, alpha-CROWN intermediate bounds (20 Adam steps, as ``verify_bab``'s
root) and alpha-CROWN on every margin (50 steps); then the MILP of the network on those
intermediate bounds (HiGHS, presolve off as in ``verify_exact``) for the class with the
lowest alpha-CROWN bound, run for ``--seconds`` (HiGHS may overrun it) without primal
heuristics (all of the time goes to the bound). Prints alpha-CROWN's and the LP
relaxation's bound on that class, the solver's dual bound and best primal value when it
stops, the best dual bound it reported on the way (to the interrupt callback, which
``verify_exact`` uses to stop at a proof; at a time limit HiGHS's final dual bound can be
lower), and its seconds, one JSON line per point.

    OMP_NUM_THREADS=1 python benchmarks/milp_gap.py \\
        --checkpoint runs/verify_bab_pruned/checkpoints/s0/dense.st --points 0 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.verify.alpha import initial_params, optimize_bounds, optimize_intermediate
from sparserobust.verify.certification import bound_pass, margin_spec
from sparserobust.verify.milp import build_milp
from sparserobust.verify.network import parse_network
from sparserobust.verify.stages import network_stages
from sparserobust.verify.threat import InputSet


def gap(model: torch.nn.Module, x0: torch.Tensor, y: int, eps: float, seconds: float) -> dict:
    layers = parse_network(model, x0.shape)
    xd = x0.double().unsqueeze(0)
    et = torch.tensor([eps], dtype=torch.float64)
    crown = bound_pass(layers, xd, torch.tensor([y]), et, math.inf, "crown")
    inp = InputSet(xd, et, math.inf)
    pre = optimize_intermediate(layers, crown.pre, inp, iterations=20)
    k = layers[-1].out_shape[0]
    rows = torch.tensor([j for j in range(k) if j != y])
    spec = margin_spec(torch.tensor([y]), k, torch.float64)[:, rows]
    with torch.enable_grad():
        got, *_ = optimize_bounds(layers, spec, pre, inp, initial_params(layers, pre, len(rows)),
                                  iterations=50)  # fmt: skip
    j = int(rows[int(got[0].argmin())])
    lo_in = (xd[0] - eps).clamp(0, 1).flatten().numpy()
    hi_in = (xd[0] + eps).clamp(0, 1).flatten().numpy()
    bnp = {i: (a[0].numpy(), b[0].numpy()) for i, (a, b) in pre.items()}
    built = build_milp(network_stages(layers), bnp, lo_in, hi_in, tighten=False,
                       deadline=math.inf, exact_first=True)  # fmt: skip
    m = built.model
    const = float(built.logits0[y] - built.logits0[j])
    m.set_objective(built.logits[y] - built.logits[j], True)
    m.h.run()  # the LP relaxation first
    lp = float(m.h.getInfo().objective_function_value) + const
    m.make_integer()
    m.h.setOptionValue("mip_rel_gap", 0.0)
    m.h.setOptionValue("mip_heuristic_effort", 0.0)
    m.limit(seconds)
    seen: list[float] = []  # the dual bounds HiGHS reports to the interrupt callback
    m.h.cbMipInterrupt.subscribe(lambda e: seen.append(float(e.data_out.mip_dual_bound)))
    start = time.perf_counter()
    m.h.run()
    m.h.cbMipInterrupt.clear()
    info = m.h.getInfo()
    best_seen = max((v for v in seen if math.isfinite(v)), default=-math.inf) + const
    primal = float(info.objective_function_value) + const
    took = round(time.perf_counter() - start, 1)
    return {"class": j, "alpha_crown": round(float(got[0].min()), 3), "lp": round(lp, 3),
            "dual": round(float(info.mip_dual_bound) + const, 3),
            "best_dual_seen": round(best_seen, 3) if math.isfinite(best_seen) else None,
            "primal": round(primal, 3) if math.isfinite(primal) else None,
            "binaries": built.binaries, "seconds": took}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--points", required=True, help="comma-separated test-image indices")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, meta = load_checkpoint(args.checkpoint)
    model = model.double().eval()
    test = load_dataset(meta["dataset"], args.data_dir).test
    for i in (int(v) for v in args.points.split(",")):
        row = gap(model, test.x[i], int(test.y[i]), args.eps, args.seconds)
        print(json.dumps({"point": i, **row}), flush=True)


if __name__ == "__main__":
    main()
