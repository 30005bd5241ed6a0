"""The one error family of sparserobust: every user mistake raises a subclass.

Messages are one line and say what to do. The CLI prints ``error: <message>``
and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class SparseRobustError(Exception):
    """Base class of every error sparserobust raises on purpose."""

    exit_code: int = 2


class ConfigError(SparseRobustError):
    """A bad option, config key or value (unknown name, impossible number)."""


class DataError(SparseRobustError):
    """A dataset cannot be found, read or has the wrong shape/range."""


class CheckpointError(SparseRobustError):
    """A file is not a valid sparserobust checkpoint, or does not fit the model."""


class ModelError(SparseRobustError):
    """A model does not behave like a classifier the tools can evaluate."""


class AttackError(SparseRobustError):
    """An attack was given inputs or parameters it cannot work with."""


class NormError(ConfigError, AttackError):
    """A norm other than 2 or inf (:func:`sparserobust.norms.parse_norm`): a config
    mistake or an attack argument alike, so it is both."""


class StoreError(SparseRobustError):
    """The results store cannot be read or written (locked, read-only, full)."""


class UnsafePathError(StoreError):
    """A path leaves the directory it must stay in (a checkpoint path of a database that
    points out of its run), or an output would overwrite what no command may (another
    run's files, a database, a device, a FIFO, a symbolic link)."""


class ClusterError(SparseRobustError):
    """A compute cluster (Ray) cannot be reached, or lost the workers of a task."""
