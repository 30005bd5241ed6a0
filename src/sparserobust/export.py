"""Export a run's results database as CSV (one row per number) or JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from sparserobust import rundir
from sparserobust.errors import StoreError
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


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything an export writes, read (read-only) and decoded at once: ``config_hash``,
    ``config``, ``models``, ``results``. StoreError (one line) for a damaged database."""
    with ResultStore(run_dir, readonly=True) as store:
        try:
            config = json.loads(store.get_meta("config") or "null")
        except ValueError:
            raise StoreError(
                f"{store.path}: the stored study config is corrupt (not JSON): re-run the "
                "study with --force"
            ) from None
        return {
            "config_hash": store.get_meta("config_hash"),
            "config": config,
            "models": [dataclasses.asdict(m) for m in store.models()],
            "results": store.results(),
        }


CSV_HEADER = [
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


def csv_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """The CSV rows (:data:`CSV_HEADER`) of decoded results: first every typed record
    of a result (``metric`` is its label), then its other numbers flattened
    (``summary.median_norm``...; the typed columns empty)."""
    rows: list[list[Any]] = []
    for r in results:
        common = [
            *(r[field] for field in RESULT_MODEL_FIELDS),
            r["measurement"],
            json.dumps(r["params"], sort_keys=True),
        ]
        for rec in records_of(r["numbers"]):
            rows.append(
                [*common, rec.label, rec.value, rec.norm, rec.eps, rec.robustness,
                 rec.higher_is_better]
            )  # fmt: skip
        flat: list[tuple[str, Any]] = []
        rest = {k: v for k, v in r["numbers"].items() if k not in ("records", "headline")}
        _flatten("", rest, flat)
        rows += [[*common, metric, value, "", "", "", ""] for metric, value in flat]
    return rows


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    csv_path: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Write the CSV (:func:`export_csv`) and/or JSON (:func:`export_json`) export of
    ``run_dir``. Both paths are checked and the whole database is read and decoded
    before either file is written, so a refused path or a damaged database leaves no
    file behind; each file is written atomically. Returns ``{"csv": rows, "json":
    results}`` for what was written."""
    for path in (csv_path, json_path):
        if path is not None:
            check_output(run_dir, path)
    data = read_run(run_dir)
    out: dict[str, int] = {}
    if csv_path is not None:
        rows = csv_rows(data["results"])

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(CSV_HEADER)
                w.writerows(rows)

        atomic_write(csv_path, write)
        out["csv"] = len(rows)
    if json_path is not None:
        text = json.dumps(data, indent=1, sort_keys=True)
        atomic_write(json_path, lambda tmp: tmp.write_text(text))
        out["json"] = len(data["results"])
    return out


def export_csv(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """Write ``model_key, seed, method, target_sparsity, sparsity, clean_accuracy,
    measurement, params, metric, value, norm, eps, robustness, higher_is_better`` rows
    (:func:`csv_rows`); returns the number of rows."""
    return export_run(run_dir, csv_path=path)["csv"]


def export_json(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """Write ``{"config": ..., "models": [...], "results": [...]}``; returns #results."""
    return export_run(run_dir, json_path=path)["json"]
