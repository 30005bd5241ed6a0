"""Wall time of a study on each executor, and Ray's scheduling overhead per task.

For each study (the quick digits study and a one-seed LeNet-300-100 study,
``benchmarks/configs/lenet300_scaling.yaml``) and each executor (inline with one
torch thread, a local pool of 2 workers, Ray with 2 CPUs on this machine), run the
study from scratch into a fresh directory and time it; then check that every
executor stored exactly the same numbers as the inline run. Then submit N no-op
tasks through the scheduler on the inline and the Ray executor: the difference per
task is Ray's overhead.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --data-dir ../shared/data \
        --out /tmp/scaling --json-out /tmp/scaling.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import torch

from sparserobust.config import load_config, quick_config
from sparserobust.engine import Task, make_executor, run_tasks
from sparserobust.engine.tasks import task_noop
from sparserobust.pipeline import run_study


def snapshot(run: Path) -> tuple[list[Any], list[Any]]:
    con = sqlite3.connect(run / "results.sqlite")
    try:
        models = con.execute(
            "SELECT model_key, accuracy, checkpoint_sha256 FROM models ORDER BY 1"
        ).fetchall()
        results = con.execute(
            "SELECT model_key, measurement, params_hash, numbers FROM results ORDER BY 1, 2, 3"
        ).fetchall()
    finally:
        con.close()
    return models, results


def time_study(config: Any, out: Path, executor: str, jobs: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = run_study(config, out, progress=False, executor=executor, jobs=jobs)
    seconds = time.perf_counter() - start
    return {"executor": executor, "jobs": jobs, "seconds": round(seconds, 1), **summary}


def noop_overhead(n: int) -> dict[str, float]:
    config = quick_config()
    out: dict[str, float] = {}
    for name in ("inline", "ray"):
        tasks = [
            Task(f"noop{i}", "measure", 0, task_noop, lambda i=i: (i,), i)  # type: ignore[misc]
            for i in range(n)
        ]
        pool = make_executor(name, jobs=2)
        try:
            run_tasks(tasks[:20], pool, config, Path("."), lambda t, r: None)  # warm-up
            start = time.perf_counter()
            run_tasks(tasks, pool, config, Path("."), lambda t, r: None)
            out[name] = (time.perf_counter() - start) / n
        finally:
            pool.close(cancel=False)
    out["ray_overhead_ms_per_task"] = 1000 * (out["ray"] - out["inline"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/scaling", help="scratch folder for the runs")
    ap.add_argument("--noop", type=int, default=500, help="no-op tasks for the overhead")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--skip-lenet300", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    studies = [("quick", quick_config())]
    if not args.skip_lenet300:
        cfg = load_config(Path(__file__).parent / "configs" / "lenet300_scaling.yaml")
        import dataclasses

        studies.append(("lenet300", dataclasses.replace(cfg, data_dir=args.data_dir)))
    rows = []
    for label, config in studies:
        ref = None
        for executor, jobs in (("inline", 1), ("local", 2), ("ray", 2)):
            run = Path(args.out) / f"{label}-{executor}"
            row = {"study": label, **time_study(config, run, executor, jobs)}
            snap = snapshot(run)
            if ref is None:
                ref = snap
            row["numbers_equal_inline"] = snap == ref
            rows.append(row)
            print(json.dumps(row), flush=True)
    overhead = noop_overhead(args.noop)
    print(json.dumps(overhead), flush=True)
    print("\n| study | executor | wall s | same numbers as inline |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['study']} | {r['executor']} -j {r['jobs']} | {r['seconds']} | "
            f"{'yes' if r['numbers_equal_inline'] else 'NO'} |"
        )
    print(f"\nRay overhead per no-op task: {overhead['ray_overhead_ms_per_task']:.2f} ms")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "noop": overhead}, indent=1))


if __name__ == "__main__":
    main()
