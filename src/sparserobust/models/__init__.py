"""Reference models: lenet300, lenet5, vgg, resnet32, linear (see ``registry``)."""

from sparserobust.models.common import Normalize, Residual
from sparserobust.models.registry import MODELS, ModelSpec, build_model, model_names, model_spec

__all__ = [
    "MODELS",
    "ModelSpec",
    "Normalize",
    "Residual",
    "build_model",
    "model_names",
    "model_spec",
]
