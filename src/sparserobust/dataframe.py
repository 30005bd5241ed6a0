"""A run's results as tidy pandas DataFrames, for notebooks: :func:`results` (one row
per model and stored record) and :func:`models` (one row per model).

Both read the run's database without writing to it (a read-only run directory works).
Like ``sparserobust export``, they trust nothing on disk blindly: each model's
checkpoint is hashed and compared with the SHA-256 the database recorded, and the
``trusted`` column says whether it matched (``untrusted`` says why not); a checkpoint
path that leaves the run directory is never opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparserobust.errors import StoreError
from sparserobust.measurements import records_of
from sparserobust.store import RESULT_MODEL_FIELDS, ModelRow, ResultStore, sha256_file

if TYPE_CHECKING:
    import pandas as pd

MODEL_COLUMNS = [
    "model_key",
    "seed",
    "method",
    "target_sparsity",
    "sparsity",
    "pruned_weights",
    "total_weights",
    "clean_accuracy",
    "parent",
    "checkpoint",
    "seconds",
    "trusted",
    "untrusted",
]
"""The columns of :func:`models`: sparsities are fractions of Linear/Conv weights
removed, ``clean_accuracy`` on the whole test split, ``seconds`` to produce the model."""

RESULT_COLUMNS = [
    *RESULT_MODEL_FIELDS,
    "parent",
    "measurement",
    "label",
    "metric",
    "source",
    "norm",
    "eps",
    "value",
    "robustness",
    "higher_is_better",
    "trusted",
]
"""The columns of :func:`results`: one row per stored record (``label`` e.g.
``"pgd_linf robust_acc@0.1"``; ``norm`` ``"inf"``/``"2"``; ``eps`` in [0,1] pixel
space for a robust accuracy, else NaN)."""


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas is a dependency
        raise StoreError("results as a DataFrame need pandas: pip install pandas") from None
    return pandas


def _trust(run: Path, row: ModelRow) -> str:
    """Why ``row``'s checkpoint cannot be trusted, or ``""`` when its SHA-256 matches."""
    rel = Path(row.checkpoint)
    if rel.is_absolute() or ".." in rel.parts:
        return "checkpoint path leaves the run directory"
    path = run / rel
    try:
        if not path.resolve().is_relative_to(run.resolve()):
            return "checkpoint path leaves the run directory"
        if not path.is_file() or path.is_symlink():
            return "checkpoint missing"
        if sha256_file(path) != row.checkpoint_sha256:
            return "checkpoint SHA-256 differs from the database"
    except OSError as exc:
        return f"checkpoint unreadable ({exc.strerror})"
    return ""


def _read(run_dir: str | os.PathLike[str]) -> tuple[list[ModelRow], list[dict[str, Any]], dict]:
    run = Path(run_dir)
    with ResultStore(run, readonly=True) as store:
        rows, results = store.models(), store.results()
    why = {m.model_key: _trust(run, m) for m in rows}
    return rows, results, why


def models(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per model of the run in ``run_dir`` (columns :data:`MODEL_COLUMNS`),
    ordered by seed, method and target sparsity. StoreError if it is not a run."""
    pandas = _pandas()
    rows, _, why = _read(run_dir)
    table = [
        [
            m.model_key,
            m.seed,
            m.method,
            m.target_sparsity,
            m.sparsity,
            m.pruned_weights,
            m.total_weights,
            m.accuracy,
            m.parent,
            m.checkpoint,
            m.seconds,
            not why[m.model_key],
            why[m.model_key] or None,
        ]
        for m in sorted(rows, key=lambda m: (m.seed, m.method, m.target_sparsity, m.model_key))
    ]
    return pandas.DataFrame(table, columns=MODEL_COLUMNS)


def results(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every stored number of the run in ``run_dir`` as a tidy table: one row per
    (model, record), columns :data:`RESULT_COLUMNS`. Filter, pivot and plot it, e.g.
    ``df[df.label == "pgd_linf robust_acc@0.1"].pivot_table("value", "target_sparsity",
    "method")``. StoreError if ``run_dir`` is not a run."""
    pandas = _pandas()
    rows, stored, why = _read(run_dir)
    parent = {m.model_key: m.parent for m in rows}
    table = []
    for r in stored:
        key = r["model_key"]
        for rec in records_of(r["numbers"]):
            table.append(
                [
                    *(r[field] for field in RESULT_MODEL_FIELDS),
                    parent.get(key),
                    r["measurement"],
                    rec.label,
                    rec.metric,
                    rec.source,
                    rec.norm,
                    rec.eps,
                    rec.value,
                    rec.robustness,
                    rec.higher_is_better,
                    not why.get(key, "unknown model"),
                ]
            )
    frame = pandas.DataFrame(table, columns=RESULT_COLUMNS)
    return frame.astype({"eps": float, "value": float})


__all__ = ["MODEL_COLUMNS", "RESULT_COLUMNS", "models", "results"]
