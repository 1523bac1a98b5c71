"""The bundled Flax networks (NHWC), their registry and their adapter to the model interface."""
from jaxviz.models.bundled import BundledModel, bundled_model
from jaxviz.models.registry import MODELS, ModelSpec, get_spec, init_params, list_models

__all__ = ["MODELS", "BundledModel", "ModelSpec", "bundled_model", "get_spec", "init_params", "list_models"]
