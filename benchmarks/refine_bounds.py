"""How much an LP or a MILP tightens the second ReLU layer's bounds of the dense
LeNet-300-100 (MNIST, l_inf), beyond the alpha-CROWN bounds branch and bound starts from.

alpha,beta-CROWN refines the intermediate bounds of its hardest MNIST fully connected
benchmarks with a MILP solver before branching. This measures what that would buy here,
per point: the 100 pre-activations of the second hidden layer are minimised and
maximised over the first layer's exact MILP (``--mode milp``, each solve capped at
``--per-bound`` seconds, the solver's dual bound taken) or its LP relaxation
(``--mode lp``), starting from the bounds ``verify_bab`` uses (CROWN, then 20 Adam
steps of alpha-CROWN on the intermediate bounds). Prints one JSON line per point:
unstable neurons and mean interval width before and after, and seconds.

    OMP_NUM_THREADS=1 python benchmarks/refine_bounds.py --points 0 --mode milp --per-bound 0.5

The model is the one ``benchmarks/bab.py`` trains and caches (``--models-dir``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from bab import dense_model  # type: ignore[import-not-found]  # sibling script

from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.verify.alpha import optimize_intermediate, relu_indices
from sparserobust.verify.certification import bound_pass
from sparserobust.verify.milp import build_milp
from sparserobust.verify.network import parse_network
from sparserobust.verify.stages import network_stages
from sparserobust.verify.threat import InputSet


def refine(model: torch.nn.Module, x0: torch.Tensor, y: int, eps: float, mode: str,
           per_bound: float) -> dict:  # fmt: skip
    layers = parse_network(model, x0.shape)
    xd = x0.double().unsqueeze(0)
    et = torch.tensor([eps], dtype=torch.float64)
    crown = bound_pass(layers, xd, torch.tensor([y]), et, math.inf, "crown")
    pre = optimize_intermediate(layers, crown.pre, InputSet(xd, et, math.inf), iterations=20)
    second = relu_indices(layers)[1]
    lo, hi = (v[0].clone() for v in pre[second])
    row = {"unstable_before": int(((lo < 0) & (hi > 0)).sum()),
           "width_before": float((hi - lo).mean())}  # fmt: skip
    start = time.perf_counter()
    stages = network_stages(layers)
    relu_stages = [k for k, s in enumerate(stages) if s.kind == "relu"]
    lo_in = (xd[0] - eps).clamp(0, 1).flatten().numpy()
    hi_in = (xd[0] + eps).clamp(0, 1).flatten().numpy()
    bounds_np = {i: (a[0].numpy(), b[0].numpy()) for i, (a, b) in pre.items()}
    built = build_milp(stages[: relu_stages[1]], bounds_np, lo_in, hi_in, tighten=False,
                       deadline=math.inf, exact_first=True)  # fmt: skip
    m = built.model
    if mode == "milp":
        m.make_integer()
    optimal = m.hp.HighsModelStatus.kOptimal
    for j in ((lo < 0) & (hi > 0)).nonzero().flatten().tolist():
        for lower in (True, False):
            m.limit(per_bound)
            m.set_objective(built.logits[j], lower)
            m.h.run()
            info = m.h.getInfo()
            if mode == "milp":
                v = float(info.mip_dual_bound)  # sound at any stop
            elif m.h.getModelStatus() == optimal:
                v = float(info.objective_function_value)
            else:
                continue
            if not math.isfinite(v):
                continue
            v += float(built.logits0[j])
            if lower:
                lo[j] = max(float(lo[j]), v - 1e-6)
            else:
                hi[j] = min(float(hi[j]), v + 1e-6)
    row.update(unstable_after=int(((lo < 0) & (hi > 0)).sum()),
               width_after=float((hi - lo).mean()),
               seconds=round(time.perf_counter() - start, 1))  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--models-dir", default="runs/verification-models")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--points", default="0", help="test indices a,b,c")
    ap.add_argument("--mode", choices=["lp", "milp"], default="milp")
    ap.add_argument("--per-bound", type=float, default=0.5, help="seconds per solve")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load_checkpoint(dense_model(args.data_dir, Path(args.models_dir)))
    model.eval()
    ds = load_dataset("mnist", args.data_dir)
    for i in (int(p) for p in args.points.split(",")):
        row = refine(model, ds.test.x[i], int(ds.test.y[i]), args.eps, args.mode, args.per_bound)
        print(json.dumps({"index": i, "mode": args.mode, "per_bound": args.per_bound, **row}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
