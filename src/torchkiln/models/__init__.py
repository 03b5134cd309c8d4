"""Model registry and builders. Importing this package registers every built-in model."""

from torchkiln.models import forecast, simple, text, text_hf, vision  # noqa: F401  (registration side effect)
from torchkiln.models.base import MODELS, Classifier, ModelSpec, create_model, register_model

__all__ = ["MODELS", "Classifier", "ModelSpec", "create_model", "register_model"]
