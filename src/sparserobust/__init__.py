"""sparserobust: what does sparsity do to adversarial robustness, and which sparsity is best?

Public API: :func:`load_checkpoint`, :func:`save_checkpoint`, the dataset and
model registries, training, pruning, attacks and metrics.
"""

__version__ = "0.1.0"

from sparserobust.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from sparserobust.errors import SparseRobustError  # noqa: E402

__all__ = ["SparseRobustError", "__version__", "load_checkpoint", "save_checkpoint"]
