"""sparserobust: what does sparsity do to adversarial robustness, and which sparsity is best?

Public API: :func:`load_checkpoint`, :func:`save_checkpoint`, :func:`results` and
:func:`models` (a run as pandas DataFrames), the dataset and model registries,
training, pruning, attacks and metrics.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sparserobust.checkpoint import load_checkpoint, save_checkpoint
from sparserobust.errors import SparseRobustError
from sparserobust.version import __version__

if TYPE_CHECKING:
    import pandas as pd


def results(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every stored number of a run as a tidy DataFrame, one row per (model, record):
    :func:`sparserobust.dataframe.results`."""
    from sparserobust.dataframe import results as read_results

    return read_results(run_dir)


def models(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per model of a run: :func:`sparserobust.dataframe.models`."""
    from sparserobust.dataframe import models as read_models

    return read_models(run_dir)


__all__ = [
    "SparseRobustError",
    "__version__",
    "load_checkpoint",
    "models",
    "results",
    "save_checkpoint",
]
