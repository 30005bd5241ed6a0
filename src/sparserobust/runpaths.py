"""Paths inside a run directory: its file names, opening a file without following links,
and confining a path read from a database to the run directory.

The primitives below both the results store (:mod:`sparserobust.store`) and the run
directory's lifecycle (:mod:`sparserobust.rundir`, which re-exports them): the store
opens and confines paths, the lifecycle uses the store.

- :func:`open_no_follow` opens a run-directory file without following links.
- :func:`checkpoint_path` confines a checkpoint path read from a database to its run
  directory (relative, no ``..``, no link, under ``checkpoints/``, a ``.st`` file).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from sparserobust.errors import StoreError, UnsafePathError

DB_NAME = "results.sqlite"
DB_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")
CHECKPOINTS = "checkpoints"


def checkpoint_name(method: str, sparsity: float) -> str:
    """File name of a sweep level, e.g. ``magnitude-s0.9000.st``."""
    return f"{method}-s{sparsity:.4f}.st"


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a run-directory file (created if missing) that never follows a
    symbolic link and refuses anything but a regular file; returns the descriptor."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"{path} is a symbolic link: sparserobust never writes through links; "
                "remove it and re-run"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file: remove it and re-run")
    return fd


# --- paths read from a database --------------------------------------------------


def lstat_or_none(path: Path) -> os.stat_result | None:
    """``os.lstat(path)``, None when missing; UnsafePathError when it cannot be read."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafePathError(f"cannot use {path} ({exc.strerror}): check it") from None


def confine(run_dir: str | os.PathLike[str], rel: object, what: str = "path") -> Path:
    """``run_dir / rel`` when ``rel`` (read from a database, a checkpoint header or a
    config) stays inside ``run_dir``: a non-empty relative path without ``..`` that,
    links resolved, does not leave the directory. UnsafePathError otherwise."""
    if not isinstance(rel, str) or rel == "" or "\x00" in rel:
        raise UnsafePathError(f"{what} {rel!r} is not a path inside the run directory")
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        raise UnsafePathError(f"{what} {rel!r} is absolute: it must stay inside the run directory")
    if ".." in pure.parts:
        raise UnsafePathError(f"{what} {rel!r} leaves the run directory ('..')")
    root = Path(run_dir).resolve()
    resolved = (root / pure).resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(
            f"{what} {rel!r} leaves the run directory (through a symbolic link, to {resolved})"
        )
    return Path(run_dir) / pure


def checkpoint_path(run_dir: str | os.PathLike[str], rel: object) -> Path:
    """The checkpoint a model row names, confined to the run directory: a ``.st`` file
    under ``checkpoints/`` (where a study writes them) that is not a symbolic link or a
    folder (it may be missing). UnsafePathError otherwise."""
    path = confine(run_dir, rel, "checkpoint path")
    parts = PurePosixPath(str(rel)).parts
    if len(parts) < 2 or parts[0] != CHECKPOINTS or not str(rel).endswith(".st"):
        raise UnsafePathError(
            f"checkpoint path {rel!r} is not a .st file under {CHECKPOINTS}/, where a study "
            "writes its checkpoints"
        )
    st = lstat_or_none(path)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"checkpoint path {rel!r} is a symbolic link")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"checkpoint path {rel!r} is not a regular file")
    return path
