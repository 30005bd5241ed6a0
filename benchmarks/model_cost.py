"""Cost per model of a study's evaluation: every measurement cell a config plans, run on
one checkpoint, timed one by one (seconds per cell and in total).

Sizes a study before running it: multiply the total by the number of models. Uses the
config's ``eval`` settings (images, attacks, measurements) and its ``channels_last``
switch (``--channels-last`` forces it on); one torch thread by default, as a study's
workers use.

    python benchmarks/model_cost.py configs/mnist_lenet5.yaml --checkpoint runs/lenet5.st \
        --data-dir ../shared/data --json-out runs/lenet5_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sparserobust.checkpoint import load_checkpoint
from sparserobust.config import load_config
from sparserobust.data import load_dataset
from sparserobust.measurements import plan_cells
from sparserobust.measurements.registry import timed_run_cell
from sparserobust.utils import use_channels_last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated cell keys to run (default: all)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    if args.channels_last or config.channels_last:
        model = use_channels_last(model)
    test = load_dataset(config.dataset, args.data_dir).test.head(config.eval.n)
    only = {k for k in args.only.split(",") if k}
    rows = []
    start = time.perf_counter()
    for cell in plan_cells(config.eval, 0):
        if only and cell.key not in only:
            continue
        _, seconds = timed_run_cell(model, test.x, test.y, cell, config.eval.batch_size)
        row = {"cell": cell.key, "n": cell.params.get("n", config.eval.n), "seconds": seconds}
        print(json.dumps({**row, "seconds": round(seconds, 2)}), flush=True)
        rows.append(row)
    total = time.perf_counter() - start
    summary = {
        "config": args.config,
        "checkpoint": Path(args.checkpoint).name,
        "model": meta.get("model"),
        "threads": args.threads,
        "channels_last": bool(args.channels_last or config.channels_last),
        "total_seconds": round(total, 1),
        "cells": [{**r, "seconds": round(r["seconds"], 2)} for r in rows],
    }
    print(json.dumps({"total_seconds": summary["total_seconds"]}))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
