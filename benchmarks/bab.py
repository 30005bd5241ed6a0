"""Branch and bound (beta-CROWN style) against the MILP on the dense LeNet-300-100, MNIST.

The dense model is trained here as in ``benchmarks/verification.py`` (LeNet-300-100,
10 epochs, seed 0; cached in ``--models-dir``). On the first ``--n`` MNIST test images
at l_inf ``--eps`` (default 0.05):

- ``--part certify``: certified accuracy and seconds of IBP, CROWN and alpha-CROWN on
  the first ``--n-certify`` images;
- ``--part bab``: :func:`sparserobust.verify.verify_bab` with ``--time-limit`` seconds per
  point: status, how decided, seconds, domains bounded;
- ``--part milp``: :func:`sparserobust.verify.verify_exact` (the MILP) on the same points
  and cap.

Each part appends JSON lines to ``--json-out``; ``--summary`` reads that file and prints
the decided fractions and the median seconds on the points both decide. Run the parts
as separate processes (one thread each) to use two cores:

    OMP_NUM_THREADS=1 python benchmarks/bab.py --part bab --json-out runs/bab.jsonl
    OMP_NUM_THREADS=1 python benchmarks/bab.py --part milp --json-out runs/bab.jsonl
    python benchmarks/bab.py --summary --json-out runs/bab.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from sparserobust.checkpoint import load_checkpoint, save_checkpoint
from sparserobust.data import load_dataset
from sparserobust.models import build_model
from sparserobust.training import TrainSettings, evaluate_accuracy, train_model
from sparserobust.verify import BabSettings, alpha_certify, certify, verify_bab, verify_exact

log = logging.getLogger("bab")


def dense_model(data_dir: str, models_dir: Path) -> Path:
    """The dense LeNet-300-100 (10 epochs, seed 0), trained once and cached."""
    path = models_dir / "dense.safetensors"
    if path.is_file():
        return path
    models_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("mnist", data_dir)
    info = ds.info
    torch.manual_seed(0)
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    train_model(model, ds.train, TrainSettings(epochs=10, seed=0), progress=False)
    meta = {
        "model": "lenet300", "dataset": "mnist", "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "mean": list(info.mean), "std": list(info.std),
        "test_accuracy": evaluate_accuracy(model, ds.test),
    }  # fmt: skip
    save_checkpoint(path, model, meta)
    return path


def summary(path: Path, time_limit: float) -> dict:
    """Decided fractions and medians over the points both verifiers decided."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by = {m: {r["index"]: r for r in rows if r.get("part") == m} for m in ("bab", "milp")}
    out: dict = {"certify": [r for r in rows if r.get("part") == "certify"]}
    for m, pts in by.items():
        decided = [r for r in pts.values() if r["status"] in ("verified", "counterexample")]
        out[m] = {
            "n": len(pts),
            "decided": len(decided),
            "statuses": {s: sum(r["status"] == s for r in pts.values())
                         for s in ("verified", "counterexample", "timeout", "error")},
            "by": {b: sum(r["by"] == b for r in pts.values())
                   for b in sorted({r["by"] for r in pts.values()})},
        }  # fmt: skip
    both = [i for i in by["bab"] if i in by["milp"]
            and by["bab"][i]["status"] in ("verified", "counterexample")
            and by["milp"][i]["status"] in ("verified", "counterexample")]  # fmt: skip
    disagree = [i for i in both if by["bab"][i]["status"] != by["milp"][i]["status"]]
    hard = [i for i in both if by["milp"][i]["by"] == "milp"]
    out["both_decided"] = len(both)
    out["disagreements"] = disagree
    for sub, ids in (("both", both), ("both_by_milp_solver", hard)):
        if ids:
            out[f"median_s_{sub}"] = {
                m: round(statistics.median(by[m][i]["seconds"] for i in ids), 3) for m in by
            }
    out["time_limit"] = time_limit
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--models-dir", default="runs/verification-models")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--start", type=int, default=0, help="first test image")
    ap.add_argument("--n-certify", type=int, default=1000)
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--part", choices=["certify", "bab", "milp"], default=None)
    ap.add_argument("--points", default=None, help="test indices a,b,c (else --start, --n)")
    ap.add_argument("--iterations", type=int, default=None, help="BabSettings.iterations")
    ap.add_argument("--batch-domains", type=int, default=None, help="BabSettings.batch_domains")
    ap.add_argument("--max-domains", type=int, default=None, help="BabSettings.max_domains")
    ap.add_argument("--branching", choices=["babsr", "fsb"], default=None,
                    help="BabSettings.branching")  # fmt: skip
    ap.add_argument("--tighten-intermediate", action="store_true", default=None,
                    help="BabSettings.tighten_intermediate")  # fmt: skip
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--json-out", default="runs/bab.jsonl")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (batched branch and bound)")
    args = ap.parse_args()
    device = torch.device(args.device)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    out = Path(args.json_out)
    if args.summary:
        print(json.dumps(summary(out, args.time_limit), indent=1))
        return
    model, meta = load_checkpoint(dense_model(args.data_dir, Path(args.models_dir)))
    model.eval().to(device)
    ds = load_dataset("mnist", args.data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if args.part == "certify":
        x, y = ds.test.x[: args.n_certify].to(device), ds.test.y[: args.n_certify].to(device)
        for method in ("ibp", "crown", "alpha"):
            start = time.perf_counter()
            if method == "alpha":
                res = alpha_certify(model, x, y, epsilon=args.eps)
            else:
                res = certify(model, x, y, epsilon=args.eps, method=method)
            emit({"part": "certify", "method": method, "epsilon": args.eps, "images": len(y),
                  "certified_accuracy": round(res.accuracy, 4),
                  "seconds": round(time.perf_counter() - start, 2),
                  "test_accuracy": meta.get("test_accuracy")})  # fmt: skip
        return
    if args.points:
        ids = [int(i) for i in args.points.split(",")]
    else:
        ids = list(range(args.start, args.start + args.n))
    x, y = ds.test.x[ids].to(device), ds.test.y[ids].to(device)
    given = {
        "iterations": args.iterations,
        "batch_domains": args.batch_domains,
        "max_domains": args.max_domains,
        "branching": args.branching,
        "tighten_intermediate": args.tighten_intermediate,
    }
    settings = BabSettings.for_device(device, **{k: v for k, v in given.items() if v is not None})
    for i in range(len(y)):  # one call per point, so rows appear as they finish
        if args.part == "bab":
            (r,) = verify_bab(model, x[i : i + 1], y[i : i + 1], epsilon=args.eps,
                              time_limit=args.time_limit, indices=[ids[i]],
                              settings=settings)  # fmt: skip
        else:
            (r,) = verify_exact(model, x[i : i + 1], y[i : i + 1], epsilon=args.eps,
                                time_limit=args.time_limit, indices=[ids[i]])  # fmt: skip
        row = {"part": args.part, "device": args.device, **r.as_dict()}
        if args.part == "bab":
            row.update(batch_domains=settings.batch_domains, max_domains=settings.max_domains,
                       branching=settings.branching,
                       tighten_intermediate=settings.tighten_intermediate)  # fmt: skip
        emit(row)


if __name__ == "__main__":
    main()
