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
(:class:`RunLock`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparserobust.errors import StoreError

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"
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

    from sparserobust import __version__

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


class RunLock:
    """Exclusive lock on a run directory: a second process refuses with a clear error."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+")  # noqa: SIM115 - held for the run's life
        except OSError as exc:
            raise StoreError(
                f"cannot use run directory {self.path.parent} ({exc.strerror}): "
                "choose a writable folder with --out"
            ) from None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise StoreError(
                f"run directory {self.path.parent} is in use by another sparserobust process: "
                "wait for it to finish or use another --out"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()


class ResultStore:
    """The SQLite results database of one run directory."""

    def __init__(self, run_dir: str | os.PathLike[str], *, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if not create and not self.path.is_file():
            raise StoreError(
                f"{self.run_dir} holds no results database ({DB_NAME}): "
                "give the run directory that `sparserobust run` wrote"
            )
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

    # --- meta -----------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

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
        row = self.conn.execute(
            "SELECT model_key, seed, method, target_sparsity, sparsity, pruned_weights, "
            "total_weights, accuracy, checkpoint, checkpoint_sha256, parent, seconds "
            "FROM models WHERE model_key=?",
            (model_key,),
        ).fetchone()
        if row is None:
            return None
        model = ModelRow(*row)
        path = self.run_dir / model.checkpoint
        if not path.is_file() or sha256_file(path) != model.checkpoint_sha256:
            return None
        return model

    def models(self) -> list[ModelRow]:
        rows = self.conn.execute(
            "SELECT model_key, seed, method, target_sparsity, sparsity, pruned_weights, "
            "total_weights, accuracy, checkpoint, checkpoint_sha256, parent, seconds "
            "FROM models ORDER BY seed, method, target_sparsity"
        ).fetchall()
        return [ModelRow(*r) for r in rows]

    # --- results --------------------------------------------------------------
    def has_result(self, model_key: str, measurement: str, params: dict[str, Any]) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM results WHERE model_key=? AND measurement=? AND params_hash=?",
            (model_key, measurement, params_hash(params)),
        ).fetchone()
        return row is not None

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

    def results(self) -> list[dict[str, Any]]:
        """Every result row joined with its model, numbers decoded."""
        rows = self.conn.execute(
            "SELECT r.model_key, m.seed, m.method, m.target_sparsity, m.sparsity, m.accuracy, "
            "r.measurement, r.params, r.numbers, r.seconds, r.config_hash, r.provenance "
            "FROM results r JOIN models m USING (model_key) "
            "ORDER BY m.seed, m.method, m.target_sparsity, r.measurement, r.params_hash"
        ).fetchall()
        out = []
        for r in rows:
            out.append(
                {
                    "model_key": r[0],
                    "seed": r[1],
                    "method": r[2],
                    "target_sparsity": r[3],
                    "sparsity": r[4],
                    "clean_accuracy": r[5],
                    "measurement": r[6],
                    "params": json.loads(r[7]),
                    "numbers": json.loads(r[8]),
                    "seconds": r[9],
                    "config_hash": r[10],
                    "provenance": json.loads(r[11]),
                }
            )
        return out


def dataclasses_astuple(row: ModelRow) -> tuple[Any, ...]:
    import dataclasses

    return dataclasses.astuple(row)
