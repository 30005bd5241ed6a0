"""Results store: one SQLite file per run directory, written one whole row at a time.

Tables
------
``meta``     key/value: schema version, the config (JSON) and its hash.
``models``   one row per finished model checkpoint (dense or pruned), with measured
             sparsity, clean accuracy, the checkpoint path relative to the run
             directory and its SHA-256, the parent and provenance.
``results``  one row per (model, measurement, parameters): every number of an attack
             or metric as JSON, wall time and provenance.

Every row is written inside one transaction, after the checkpoint it refers to
has been written atomically, so an interrupted run never leaves a row that a
later run would trust. A run directory is held by one process at a time
(:class:`~sparserobust.rundir.RunLock`), and a checkpoint path read from the
database is followed only when it stays inside its run directory
(:func:`~sparserobust.runpaths.checkpoint_path`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparserobust.errors import StoreError, UnsafePathError
from sparserobust.runpaths import DB_NAME, checkpoint_path, open_no_follow

SCHEMA_VERSION = 1
DB_TIMEOUT = 10.0
"""Seconds to wait for another process's lock on the database before giving up."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model_key TEXT PRIMARY KEY,
    seed INTEGER NOT NULL,
    method TEXT NOT NULL,
    target_sparsity REAL NOT NULL,
    sparsity REAL NOT NULL,
    pruned_weights INTEGER NOT NULL,
    total_weights INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    checkpoint TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    parent TEXT,
    seconds REAL NOT NULL,
    config_hash TEXT NOT NULL,
    provenance TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    model_key TEXT NOT NULL REFERENCES models(model_key),
    measurement TEXT NOT NULL,
    params TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    numbers TEXT NOT NULL,
    seconds REAL NOT NULL,
    config_hash TEXT NOT NULL,
    provenance TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (model_key, measurement, params_hash)
);
"""


RESULT_MODEL_FIELDS = (
    "model_key",
    "seed",
    "method",
    "target_sparsity",
    "sparsity",
    "clean_accuracy",
)
"""The model's columns that every row of :meth:`ResultStore.results` carries, in the
order the CSV export and :func:`sparserobust.results` put them first."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of a parameter mapping (sorted-key JSON)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The sparserobust source tree's git commit, when it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device: str) -> dict[str, Any]:
    """Where and with what a number was computed: versions, device, commit, host."""
    import numpy
    import scipy
    import torch

    from sparserobust.version import __version__

    return {
        "sparserobust": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


FRONT = "dense-front"
"""The method name of dense-front models in the results store (never a pruning method;
:mod:`sparserobust.control`)."""


@dataclass(frozen=True)
class ModelRow:
    """A finished model of a run (a row of ``models``)."""

    model_key: str
    seed: int
    method: str
    target_sparsity: float
    sparsity: float
    pruned_weights: int
    total_weights: int
    accuracy: float
    checkpoint: str
    checkpoint_sha256: str
    parent: str | None
    seconds: float


_ROW_TYPES: tuple[type | tuple[type, ...], ...] = (
    str,
    int,
    str,
    float,
    float,
    int,
    int,
    float,
    str,
    str,
    (str, type(None)),
    float,
)


def _model_row(values: tuple[Any, ...], db: Path) -> ModelRow:
    """A :class:`ModelRow` from a database row; StoreError when a cell holds the wrong
    type (a damaged or hand-edited database)."""
    for value, kind, f in zip(values, _ROW_TYPES, dataclasses.fields(ModelRow), strict=True):
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise StoreError(
                f"{db}: models.{f.name} of {values[0]!r} holds {value!r}, not a "
                f"{getattr(kind, '__name__', 'value')}: the database is damaged; "
                "re-run the study with --force"
            )
    return ModelRow(*values)


class ResultStore:
    """The SQLite results database of one run directory."""

    def __init__(
        self, run_dir: str | os.PathLike[str], *, create: bool = True, readonly: bool = False
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.readonly = readonly
        if (readonly or not create) and not self.path.is_file():
            raise StoreError(
                f"{self.run_dir} holds no results database ({DB_NAME}): "
                "give the run directory that `sparserobust run` wrote"
            )
        if readonly:
            self.conn = self._connect_readonly()
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=DB_TIMEOUT, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
        except sqlite3.OperationalError as exc:
            raise StoreError(self._explain(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a sparserobust results database ({exc}): "
                "move it away or choose another run directory"
            ) from None
        except OSError as exc:
            raise StoreError(
                f"cannot create {self.run_dir} ({exc.strerror}): choose a writable folder"
            ) from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif version != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path} has schema {version}, this sparserobust writes {SCHEMA_VERSION}: "
                "use a new run directory"
            )

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open the database without writing anything (export, report: a read-only run
        directory works). Falls back to ``immutable`` when SQLite cannot create the WAL
        index beside a read-only database; refuses a database that holds no study."""
        uri = self.path.resolve().as_uri()
        conn: sqlite3.Connection | None = None
        last = sqlite3.OperationalError("unable to open database file")
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(uri + query, uri=True, timeout=DB_TIMEOUT)
                tables = {
                    r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                break
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                conn = None
                last = exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"{self.path} is not a sparserobust results database ({exc}): "
                    "give the run directory that `sparserobust run` wrote"
                ) from None
        if conn is None:
            raise StoreError(self._explain(last))
        if not {"meta", "models", "results"} <= tables:
            conn.close()
            raise StoreError(
                f"{self.path} holds no sparserobust study (tables missing; was its -wal file "
                "deleted?): re-run the study"
            )
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='config_hash'").fetchone()
        except sqlite3.OperationalError:  # a config hash that is not UTF-8 text
            row = None
        if row is None:
            conn.close()
            raise StoreError(
                f"{self.path} holds no study record (was its -wal file deleted, or the run "
                "never started?): re-run the study"
            )
        return conn

    def _explain(self, exc: sqlite3.OperationalError) -> str:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return f"results database {self.path} is locked by another process: wait and retry"
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return f"cannot write results database {self.path} ({text}): choose a writable folder"
        if "disk" in text and "full" in text:
            return f"disk full writing {self.path}: free space and re-run (finished work is kept)"
        return f"results database {self.path} failed ({text})"

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreError(self._explain(exc)) from None

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Every row of a query; StoreError (one line) when SQLite fails, e.g. on a text
        cell that is not UTF-8 (a hand-edited or damaged database), which Python's sqlite3
        cannot decode."""
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "decode" in text:
                column = re.search(r"column '([^']{1,60})'", text)
                raise StoreError(
                    f"{self.path}: a text cell (column {column.group(1) if column else '?'}) "
                    "is not UTF-8: the database is damaged; re-run the study with --force"
                ) from None
            raise StoreError(self._explain(exc)) from None

    # --- meta -----------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key=?", (key,))
        return None if not rows else str(rows[0][0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- models ---------------------------------------------------------------
    def add_model(self, row: ModelRow, config_hash: str, prov: dict[str, Any]) -> None:
        """Insert (or replace) a finished model; its checkpoint must already exist."""
        values = dataclasses_astuple(row) + (config_hash, json.dumps(prov, sort_keys=True), _now())
        with self._transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", values
            )

    def get_model(self, model_key: str) -> ModelRow | None:
        """The model row, or None when it is missing or its checkpoint is not intact."""
        rows = self._rows(
            "SELECT model_key, seed, method, target_sparsity, sparsity, pruned_weights, "
            "total_weights, accuracy, checkpoint, checkpoint_sha256, parent, seconds "
            "FROM models WHERE model_key=?",
            (model_key,),
        )
        if not rows:
            return None
        model = _model_row(rows[0], self.path)
        try:
            path = checkpoint_path(self.run_dir, model.checkpoint)
        except UnsafePathError:  # never followed; drop_untrusted_models reports it
            return None
        if not path.is_file() or sha256_file(path) != model.checkpoint_sha256:
            return None
        return model

    def models(self) -> list[ModelRow]:
        rows = self._rows(
            "SELECT model_key, seed, method, target_sparsity, sparsity, pruned_weights, "
            "total_weights, accuracy, checkpoint, checkpoint_sha256, parent, seconds "
            "FROM models ORDER BY seed, method, target_sparsity"
        )
        return [_model_row(r, self.path) for r in rows]

    # --- results --------------------------------------------------------------
    def has_result(self, model_key: str, measurement: str, params: dict[str, Any]) -> bool:
        rows = self._rows(
            "SELECT 1 FROM results WHERE model_key=? AND measurement=? AND params_hash=?",
            (model_key, measurement, params_hash(params)),
        )
        return bool(rows)

    def add_result(
        self,
        model_key: str,
        measurement: str,
        params: dict[str, Any],
        numbers: dict[str, Any],
        seconds: float,
        config_hash: str,
        prov: dict[str, Any],
    ) -> None:
        """Insert (or replace) every number of one measurement on one model, atomically."""
        with self._transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    model_key,
                    measurement,
                    json.dumps(params, sort_keys=True),
                    params_hash(params),
                    json.dumps(numbers, sort_keys=True, allow_nan=True),
                    seconds,
                    config_hash,
                    json.dumps(prov, sort_keys=True),
                    _now(),
                ),
            )

    def delete_models(self, keys: list[str]) -> None:
        """Forget the models ``keys`` and every result measured on them, in one
        transaction (a checkpoint that is no longer trusted is recomputed)."""
        if not keys:
            return
        marks = ",".join("?" * len(keys))
        with self._transaction() as c:
            c.execute(f"DELETE FROM results WHERE model_key IN ({marks})", keys)
            c.execute(f"DELETE FROM models WHERE model_key IN ({marks})", keys)

    def results(self) -> list[dict[str, Any]]:
        """Every result row joined with its model, numbers decoded."""
        rows = self._rows(
            "SELECT r.model_key, m.seed, m.method, m.target_sparsity, m.sparsity, m.accuracy, "
            "r.measurement, r.params, r.numbers, r.seconds, r.config_hash, r.provenance "
            "FROM results r JOIN models m USING (model_key) "
            "ORDER BY m.seed, m.method, m.target_sparsity, r.measurement, r.params_hash"
        )
        out = []
        for r in rows:
            try:
                params, numbers, prov = json.loads(r[7]), json.loads(r[8]), json.loads(r[11])
            except (TypeError, ValueError):
                raise StoreError(
                    f"{self.path}: the result {r[6]} of model {r[0]} is corrupt (not JSON): "
                    "delete that row or re-run with --force"
                ) from None
            out.append(
                {
                    "model_key": r[0],
                    "seed": r[1],
                    "method": r[2],
                    "target_sparsity": r[3],
                    "sparsity": r[4],
                    "clean_accuracy": r[5],
                    "measurement": r[6],
                    "params": params,
                    "numbers": numbers,
                    "seconds": r[9],
                    "config_hash": r[10],
                    "provenance": prov,
                }
            )
        return out


__all__ = ["DB_NAME", "ModelRow", "ResultStore", "open_no_follow", "sha256_file"]


def dataclasses_astuple(row: ModelRow) -> tuple[Any, ...]:
    import dataclasses

    return dataclasses.astuple(row)
