"""The bundled Flax networks (NHWC), their registry and their adapter to the model interface.

A network is a tuple of layer kinds (``kinds``: one class per kind with its forward pass, geometry,
incremental-occlusion rule and cost; family kinds live in their family's module, e.g.
``squeezenet.Fire``) run in order by ``network.SequentialNet``; ``incremental`` holds the box
arithmetic the kinds' rules share.
"""
from jaxviz.models.bundled import BundledModel, bundled_model
from jaxviz.models.registry import MODELS, ModelSpec, get_spec, init_params, list_models

__all__ = ["MODELS", "BundledModel", "ModelSpec", "bundled_model", "get_spec", "init_params", "list_models"]
