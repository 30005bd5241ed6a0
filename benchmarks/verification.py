"""Cost and tightness of certified (IBP, CROWN) and exact (MILP) verification, dense vs sparse.

LeNet-300-100 on MNIST, trained here (10 epochs, seed 0) and pruned to 90% by
layer-wise magnitude pruning in 3 steps with 2 epochs of retraining each; both
models are cached in ``--models-dir``. For each model and l_inf epsilon:

- IBP and CROWN on the first ``--n-certify`` test images: certified accuracy,
  wall-clock and CPU seconds (float64 and float32), mean unstable ReLUs per
  point under IBP and CROWN;
- exact verification (:func:`sparserobust.measurements.verify.verify_points`) of the first
  ``--n-exact`` test images with ``--time-limit`` seconds per point: counts per
  status, resolved share, how each point was decided, median / p95 seconds;
- with ``--lp``, the same MILP points again with LP tightening, for the unstable
  ReLUs it removes beyond CROWN.

    python benchmarks/verification.py --data-dir ../shared/data \\
        --models-dir runs/verification-models --json-out runs/verification.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from sparserobust.checkpoint import load_checkpoint, save_checkpoint
from sparserobust.data import load_dataset
from sparserobust.measurements.verify import verify_points
from sparserobust.models import build_model
from sparserobust.pruning.sweep import prune_model
from sparserobust.training import TrainSettings, evaluate_accuracy, train_model
from sparserobust.verify import certify

log = logging.getLogger("verification")


def prepare_models(data_dir: str, models_dir: Path) -> dict[str, Path]:
    """Train the dense model and prune a copy to 90%; reuse cached checkpoints."""
    models_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "dense": models_dir / "dense.safetensors",
        "sparse90": models_dir / "sparse90.safetensors",
    }
    if all(p.is_file() for p in paths.values()):
        return paths
    ds = load_dataset("mnist", data_dir)
    info = ds.info
    torch.manual_seed(0)
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    train_model(model, ds.train, TrainSettings(epochs=10, seed=0), progress=False)
    meta = {
        "model": "lenet300", "dataset": "mnist", "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "mean": list(info.mean), "std": list(info.std),
    }  # fmt: skip
    save_checkpoint(
        paths["dense"], model, {**meta, "test_accuracy": evaluate_accuracy(model, ds.test)}
    )
    prune_model(model, "magnitude", 0.9, train=ds.train, retrain=TrainSettings(epochs=2, seed=0),
                steps=3)  # fmt: skip
    save_checkpoint(
        paths["sparse90"], model, {**meta, "test_accuracy": evaluate_accuracy(model, ds.test)}
    )
    return paths


def certify_row(model, x, y, eps: float, method: str, dtype: torch.dtype) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    res = certify(model, x, y, epsilon=eps, method=method, dtype=dtype)
    return {
        "method": method,
        "dtype": str(dtype).removeprefix("torch."),
        "epsilon": eps,
        "images": int(x.shape[0]),
        "certified_accuracy": round(res.accuracy, 4),
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "unstable_relus_mean": round(float(res.unstable_relus().float().mean()), 1),
        "unstable_relus_ibp_mean": round(float(res.unstable_relus(ibp=True).float().mean()), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--models-dir", default="runs/verification-models")
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    ap.add_argument("--n-certify", type=int, default=1000)
    ap.add_argument("--n-exact", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--lp", action="store_true", help="also run the MILP points with LP tightening")
    ap.add_argument("--models", nargs="+", default=["sparse90", "dense"])
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    paths = prepare_models(args.data_dir, Path(args.models_dir))
    ds = load_dataset("mnist", args.data_dir)
    x, y = ds.test.x[: args.n_certify], ds.test.y[: args.n_certify]
    out: dict = {"threads": torch.get_num_threads(), "args": vars(args), "models": {}}
    for name in args.models:
        model, meta = load_checkpoint(paths[name])
        rec: dict = {"test_accuracy": meta.get("test_accuracy"), "certify": [], "exact": []}
        out["models"][name] = rec
        for eps in args.epsilons:
            for method, dtype in (("ibp", torch.float64), ("crown", torch.float64),
                                  ("crown", torch.float32)):  # fmt: skip
                row = certify_row(model, x, y, eps, method, dtype)
                rec["certify"].append(row)
                print(json.dumps({"model": name, **row}), flush=True)
        variants = [False, True] if args.lp else [False]
        for tighten in variants:
            exact = verify_points(model, x[: args.n_exact], y[: args.n_exact],
                                  epsilons=args.epsilons, n_exact=args.n_exact,
                                  time_limit=args.time_limit, seed=0, tighten=tighten)  # fmt: skip
            for entry in exact["epsilons"]:
                ex = entry["exact"]
                row = {
                    "epsilon": entry["epsilon"], "lp_tightening": tighten, "n": ex["n"],
                    **{k: ex[k] for k in ("verified", "counterexample", "timeout", "error")},
                    "resolved_share": round(ex["resolved_share"], 3), "by": ex["by"],
                    "seconds_median": ex["seconds_median"], "seconds_p95": ex["seconds_p95"],
                    "milp_seconds_median": ex["milp_seconds_median"],
                    "unstable_ibp": [p["unstable"].get("ibp") for p in ex["points"]],
                    "unstable_crown": [p["unstable"].get("crown") for p in ex["points"]],
                    "unstable_lp": [p["unstable"].get("lp") for p in ex["points"]],
                    "statuses": [p["status"][:4] + "/" + p["by"] for p in ex["points"]],
                    "point_seconds": [p["seconds"] for p in ex["points"]],
                }  # fmt: skip
                rec["exact"].append(row)
                print(json.dumps({"model": name, **row}), flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
