"""Time every measurement of a study config on one model in the default (NCHW) and the
channels-last layout (config key ``channels_last``), on one torch thread, and compare
the numbers. Each measurement runs in both layouts back to back, so both see the same
machine load.

    OMP_NUM_THREADS=1 python benchmarks/channels_last.py \\
        --config configs/mnist_lenet5.yaml --checkpoint runs/X/checkpoints/s0/dense.st \\
        --data-dir ../shared/data --n 200 --clever-n 5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

from sparserobust.checkpoint import load_checkpoint
from sparserobust.config import load_config
from sparserobust.data import load_dataset
from sparserobust.measurements import plan_cells, run_cell, values_of
from sparserobust.utils import use_channels_last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--n", type=int, default=200, help="test images per attack")
    ap.add_argument("--clever-n", type=int, default=5, help="images for CLEVER")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    settings = config.eval
    settings = dataclasses.replace(
        settings,
        n=args.n,
        clever=dataclasses.replace(settings.clever, n=min(settings.clever.n, args.clever_n)),
        masking=tuple(dataclasses.replace(m, n=min(m.n, args.n)) for m in settings.masking),
    )
    data = load_dataset(config.dataset, args.data_dir).test.head(args.n)
    plain, _ = load_checkpoint(args.checkpoint)
    fast = use_channels_last(copy.deepcopy(plain))
    rows = []
    for cell in plan_cells(settings, 0):
        name = cell.key
        times, heads = [], []
        for model in (plain, fast):
            start = time.perf_counter()
            out = run_cell(model, data.x, data.y, cell, settings.batch_size)
            times.append(time.perf_counter() - start)
            heads.append(values_of(out))
        diff = max((abs(heads[0][k] - heads[1][k]) for k in heads[0] if k in heads[1]), default=0.0)
        row = {
            "measurement": name,
            "nchw_s": round(times[0], 2),
            "channels_last_s": round(times[1], 2),
            "speedup": round(times[0] / max(times[1], 1e-9), 2),
            "max_headline_diff": diff,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = [sum(r["nchw_s"] for r in rows), sum(r["channels_last_s"] for r in rows)]
    print("\n| measurement | NCHW s | channels-last s | speedup | max headline diff |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['measurement']} | {r['nchw_s']} | {r['channels_last_s']} | {r['speedup']}x "
            f"| {r['max_headline_diff']:.2g} |"
        )
    print(f"| **all** | {total[0]:.1f} | {total[1]:.1f} | {total[0] / total[1]:.2f}x | |")


if __name__ == "__main__":
    main()
