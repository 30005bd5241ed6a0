"""The run directory's lifecycle, and the one output-path policy of every command.

A run directory (``runs/<name>-<hash>``, or ``--out``) holds the results database
``results.sqlite``, the checkpoints under ``checkpoints/``, ``run.log``, the lock
``.lock`` and the report under ``report/``. This module decides what may be read,
written or deleted there:

- :class:`RunLock` holds a run directory for one process; :func:`open_no_follow`
  opens its files without following links (with :func:`checkpoint_path`, from
  :mod:`sparserobust.runpaths`, below the results store, which uses them too).
- :func:`drop_untrusted_models` forgets every model whose row fails
  :func:`checkpoint_path` or whose file is not intact, and deletes only files that
  pass it.
- :func:`check_force_target` and :func:`start_over` are ``run --force``;
  :func:`check_layout` refuses a run directory whose own files are links;
  :func:`clean_stale_temps` removes the temp files of our atomic writer
  (:func:`sparserobust.utils.atomic_write`) for the files a study writes, in the
  folders it writes, and nothing else.
- :func:`check_output` is the output-path policy of ``run``, ``report``, ``export``,
  ``compare``, ``compact``, ``prune`` and ``train``: never an empty path, never into
  a run directory other than the command's own, never over a database, a device, a
  FIFO, a folder or a symbolic link.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from sparserobust.checkpoint import verify_checkpoint
from sparserobust.errors import CheckpointError, ConfigError, StoreError, UnsafePathError
from sparserobust.runpaths import (
    CHECKPOINTS,
    DB_FILES,
    DB_NAME,
    checkpoint_name,
    checkpoint_path,
    confine,
    lstat_or_none,
    open_no_follow,
)
from sparserobust.store import FRONT, ModelRow, ResultStore, sha256_file

log = logging.getLogger(__name__)

REPORT = "report"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
"""A temp file of :func:`~sparserobust.utils.atomic_write`: ``tempfile.mkstemp`` with
prefix ``.<name>.`` and suffix ``.tmp`` (8 random characters of ``[a-z0-9_]``)."""


# --- locking and opening ---------------------------------------------------------


class RunLock:
    """Exclusive lock on a run directory: a second process refuses with a clear error."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = os.fdopen(open_no_follow(self.path, os.O_RDWR), "r+")
        except StoreError:
            raise
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


def _is_file_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


def drop_untrusted_models(store: ResultStore, run_dir: Path) -> list[str]:
    """Forget every model whose checkpoint is not intact, and everything built on it.

    A model row is trusted only when its checkpoint path stays in the run directory
    (:func:`checkpoint_path`), its parent is a file name, and its file exists, has the
    SHA-256 stored with the row, loads, fits its architecture (mask shapes) and holds
    finite weights. An untrusted row, its results and the rows of every model derived
    from it (pruned levels name their parent file; the dense model is every sweep's
    root) are deleted in one transaction, so planning recomputes them; of their files,
    only regular files at a confined checkpoint path that no trusted row names are
    removed (a path that fails is reported and never followed). Returns the deleted
    model keys."""
    rows = store.models()
    bad: set[str] = set()
    paths: dict[str, Path] = {}
    for row in rows:
        why = None
        try:
            path = checkpoint_path(run_dir, row.checkpoint)
        except UnsafePathError as exc:
            why = f"{exc}; its file is never followed"
        else:
            paths[row.model_key] = path
            if row.parent is not None and not _is_file_name(row.parent):
                why = f"its parent {row.parent!r} is not a checkpoint file name"
            elif not path.is_file():
                why = "missing"
            elif sha256_file(path) != row.checkpoint_sha256:
                why = "its SHA-256 does not match the database"
            else:
                try:
                    verify_checkpoint(path)
                except CheckpointError as exc:
                    why = str(exc)
        if why is not None:
            log.warning("not trusting model %s (%s): recomputing it", row.model_key, why)
            bad.add(row.model_key)
    by_file = {(r.seed, r.method, PurePosixPath(r.checkpoint).name): r.model_key for r in rows}
    dense = {r.seed: r.model_key for r in rows if r.method == "dense"}

    def parent_key(r: ModelRow) -> str | None:
        if r.method in ("dense", FRONT):  # the dense front is trained, not derived
            return None
        if r.parent in (None, "dense.st"):
            return dense.get(r.seed)
        return by_file.get((r.seed, r.method, str(r.parent)))

    changed = True
    while changed:
        changed = False
        for r in rows:
            if r.model_key not in bad and parent_key(r) in bad:
                log.warning("not trusting model %s: built on an untrusted one", r.model_key)
                bad.add(r.model_key)
                changed = True
    doomed = [r.model_key for r in rows if r.model_key in bad]
    store.delete_models(doomed)
    kept = {paths[r.model_key].resolve() for r in rows if r.model_key not in bad}
    for key in doomed:
        path = paths.get(key)
        if path is None or path.resolve() in kept:
            continue
        st = lstat_or_none(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            path.unlink(missing_ok=True)
    return doomed


# --- the run directory itself ----------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a results database (is, or was, a run directory)."""
    return os.path.lexists(path / DB_NAME)


def check_layout(run: Path) -> None:
    """UnsafePathError when a file or folder the study writes in ``run`` (database,
    log, checkpoints, report) is a symbolic link or of the wrong kind: the study would
    write through it, outside the run."""
    for name, folder in [(n, False) for n in (*DB_FILES, "run.log")] + [
        (CHECKPOINTS, True),
        (REPORT, True),
    ]:
        st = lstat_or_none(run / name)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(
                f"{run / name} is a symbolic link: sparserobust never writes through links; "
                "remove it and re-run"
            )
        if folder != stat.S_ISDIR(st.st_mode) or not (folder or stat.S_ISREG(st.st_mode)):
            kind = "a folder" if folder else "a regular file"
            raise UnsafePathError(f"{run / name} is not {kind}: move it away and re-run")


def check_force_target(run: Path) -> None:
    """Refuse ``--force`` on a folder that holds files but is not a run directory: it
    only ever deletes a run's own database, checkpoints and report."""
    if not (run / DB_NAME).is_file():
        others = [p.name for p in run.iterdir() if p.name not in (".lock", "run.log")]
        if others:
            raise StoreError(
                f"--force: {run} is not a sparserobust run directory (no {DB_NAME}; "
                f"it holds {others[0]!r}): choose the run directory with --out"
            )


def start_over(run: Path) -> None:
    """``run --force``, after :func:`check_force_target` and :func:`check_layout`:
    delete the run's database, checkpoints and report."""
    for name in DB_FILES:
        (run / name).unlink(missing_ok=True)
    for name in (CHECKPOINTS, REPORT):
        if (run / name).is_dir() and not (run / name).is_symlink():
            shutil.rmtree(run / name)


def _real_dir(run: Path, *parts: str) -> Path | None:
    """``run/parts...`` when every component below ``run`` is a real folder (no link)."""
    path = run
    for part in parts:
        path = path / part
        st = lstat_or_none(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
    return path


def remove_temps(folder: Path | None, owns: Iterable[str] | None = None, suffix: str = "") -> int:
    """Delete, in ``folder`` only (not below), the regular files our atomic writer names
    ``.<name>.XXXXXXXX.tmp`` for a ``name`` in ``owns`` or ending with ``suffix``.
    Returns how many were removed."""
    if folder is None:
        return 0
    names = set(owns or ())
    removed = 0
    for entry in os.scandir(folder):
        match = _TEMP.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        name = match["name"]
        if name in names or (suffix and name.endswith(suffix)):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def clean_stale_temps(
    run: Path, seeds: Sequence[int], sweeps: Mapping[str, Sequence[float]]
) -> int:
    """Remove the temp files a killed run of a study left in ``run``: only for files the
    study writes (each seed's dense checkpoint, its sweeps' levels: method -> targets,
    the report), only in the folders it writes them to. Call it with the run directory
    locked and validated as this study's. Returns how many were removed."""
    removed = remove_temps(_real_dir(run, REPORT), ("report.md", "report.html"), ".png")
    for seed in seeds:
        removed += remove_temps(_real_dir(run, CHECKPOINTS, f"s{seed}"), ("dense.st",))
        for method, targets in sweeps.items():
            names = [checkpoint_name(method, t) for t in targets]
            removed += remove_temps(_real_dir(run, CHECKPOINTS, f"s{seed}", method), names)
    if removed:
        log.info("removed %d temp file(s) of a killed run in %s", removed, run)
    return removed


# --- the output-path policy --------------------------------------------------------


def _full(path: Path) -> Path:
    """``path`` made absolute with its folders resolved; the last component kept as is
    (so a link there is seen, not followed)."""
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def _is_database(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def check_output(
    path: str | os.PathLike[str],
    *,
    folder: bool = False,
    own_run: str | os.PathLike[str] | None = None,
    what: str = "the output path",
) -> Path:
    """``path`` as a :class:`Path` if a command may write there, else a one-line error.

    Refused: an empty path or one with a NUL (ConfigError); a symbolic link (dangling
    too); for a file, anything that exists and is not a regular file (folder, device,
    FIFO, socket) or is an SQLite database, and a run database's name; for a folder
    (``folder=True``), anything that exists and is not a folder; and any path inside a
    run directory (one holding ``results.sqlite``), or that is one, unless that run is
    ``own_run`` (``report`` into its own run, ``run`` in its own directory). So a
    database, a checkpoint a database references and another run's report are never
    overwritten. Checks before anything is written (UnsafePathError)."""
    text = os.fspath(path)
    if text == "":
        raise ConfigError(
            f"{what} is empty: give a {'folder' if folder else 'file'} name "
            "(use '.' for the current folder)"
        )
    if "\x00" in text:
        raise ConfigError(f"{what} contains a NUL character: remove it")
    target = Path(text)
    try:
        full = _full(target)
    except (OSError, RuntimeError) as exc:
        raise UnsafePathError(f"cannot use {target} ({exc}): choose another path") from None
    st = lstat_or_none(target)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"refusing to write {target}: it is a symbolic link, not a "
            f"{'folder' if folder else 'regular file'} (sparserobust never writes "
            "through links); choose another path"
        )
    own = Path(own_run).resolve() if own_run is not None else None
    for d in [full, *full.parents] if folder else list(full.parents):
        if is_run_dir(d) and d != own:
            where = "it is" if d == full else "it lies inside"
            raise UnsafePathError(
                f"refusing to write {target}: {where} the run directory {d} (a run's "
                "database, checkpoints and report are never overwritten); choose a path "
                "outside it"
            )
    if st is not None:
        if folder and not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(
                f"refusing to write into {target}: it exists and is not a folder; "
                "move it away or choose another path"
            )
        if not folder and not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"refusing to replace {target}: it is not a regular file (a folder, device "
                "or FIFO); choose another path"
            )
        if not folder and _is_database(target):
            raise UnsafePathError(
                f"refusing to replace {target}: it is an SQLite database; choose another path"
            )
    if not folder and full.name in DB_FILES:
        raise UnsafePathError(
            f"refusing to write {target}: {full.name} is a run's database name; choose another name"
        )
    return target


__all__ = [
    "DB_NAME",
    "RunLock",
    "check_force_target",
    "check_layout",
    "check_output",
    "checkpoint_path",
    "clean_stale_temps",
    "confine",
    "drop_untrusted_models",
    "is_run_dir",
    "open_no_follow",
    "remove_temps",
    "start_over",
]
