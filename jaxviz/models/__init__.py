"""Flax models (NHWC) and their registry."""
from jaxviz.models.registry import (MODELS, Model, ModelSpec, Preprocessing, get_spec, init_params,
                                    list_models)

__all__ = ["MODELS", "Model", "ModelSpec", "Preprocessing", "get_spec", "init_params", "list_models"]
