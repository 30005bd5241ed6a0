"""Export a run's results database as CSV (one row per number) or JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from sparserobust import rundir
from sparserobust.measurements import records_of
from sparserobust.store import RESULT_MODEL_FIELDS, ResultStore
from sparserobust.utils import atomic_write


def check_output(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` if an export of ``run_dir`` may be written there: the output-path policy
    of every command (:func:`sparserobust.rundir.check_output`): not inside any run
    directory (its own included), not over a database or a non-regular file."""
    return rundir.check_output(path, what="the export path")


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value) and len(value) <= 16:
            out.append((prefix, json.dumps(value)))
        # long per-sample lists (scores) stay in the JSON export only
    else:
        out.append((prefix, value))


def export_csv(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """Write ``model_key, seed, method, target_sparsity, sparsity, clean_accuracy,
    measurement, params, metric, value, norm, eps, robustness, higher_is_better`` rows:
    first every typed record of a result (``metric`` is its label), then its other
    numbers flattened (``summary.median_norm``...; the typed columns empty). Returns
    the number of rows."""
    check_output(run_dir, path)
    with ResultStore(run_dir, readonly=True) as store:
        results = store.results()
    rows: list[list[Any]] = []
    for r in results:
        common = [
            *(r[field] for field in RESULT_MODEL_FIELDS),
            r["measurement"],
            json.dumps(r["params"], sort_keys=True),
        ]
        for rec in records_of(r["numbers"]):
            rows.append(
                [
                    *common,
                    rec.label,
                    rec.value,
                    rec.norm,
                    rec.eps,
                    rec.robustness,
                    rec.higher_is_better,
                ]
            )
        flat: list[tuple[str, Any]] = []
        rest = {k: v for k, v in r["numbers"].items() if k not in ("records", "headline")}
        _flatten("", rest, flat)
        rows += [[*common, metric, value, "", "", "", ""] for metric, value in flat]
    header = [
        *RESULT_MODEL_FIELDS,
        "measurement",
        "params",
        "metric",
        "value",
        "norm",
        "eps",
        "robustness",
        "higher_is_better",
    ]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    atomic_write(path, write)
    return len(rows)


def export_json(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """Write ``{"config": ..., "models": [...], "results": [...]}``; returns #results."""
    check_output(run_dir, path)
    with ResultStore(run_dir, readonly=True) as store:
        payload = {
            "config_hash": store.get_meta("config_hash"),
            "config": json.loads(store.get_meta("config") or "null"),
            "models": [dataclasses.asdict(m) for m in store.models()],
            "results": store.results(),
        }
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1, sort_keys=True)))
    return len(payload["results"])
