"""CPU acceleration, applied by the front ends (CLI, gallery, benchmarks) to a model once.

``accelerate(model)`` returns the same network with the same parameters and the same results (to
float rounding), faster on this hardware:

- on CPU, XLA's Eigen convolutions for networks whose convolutions are all dense (``xla``),
  carried as ``model.compiler_options`` for whoever jits a function of the model;
- for the bundled sequential networks, a max-pool backward without ``select_and_scatter``, and
  convolutions that use kernels precomputed once per image optimisation
  (``model.prepare_params``: transposed kernels, Winograd forms for VGG's deep layers)
  (``fast_layers``, ``winograd``).

Technique modules never import this package; they only read ``model.compiler_options`` and call
``model.prepare_params``, which are neutral on a model that was not accelerated.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxviz.accel import xla
from jaxviz.accel.fast_layers import FastPoolNet, with_stored_kernels
from jaxviz.interface import Model, as_model
from jaxviz.models.network import SequentialNet

__all__ = ["accelerate"]


def accelerate(model) -> Model:
    """``model`` with the CPU speed-ups above (cached: the same object for the same model)."""
    model = as_model(model)
    if getattr(model, "accelerated", False):
        return model
    key = ("accelerate",)
    if key not in model._derived:
        changes = {"accelerated": True}
        h, w = model.input_hw()
        probe = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        try:
            grouped = xla.has_grouped_convolutions(model.apply, model.params, probe)
        except Exception:  # a model that needs another input shape: leave XLA's default choice
            grouped = True
        changes["compiler_options"] = xla.compiler_options(dense_convolutions=not grouped)
        module = getattr(model, "module", None)
        if isinstance(module, SequentialNet) and type(module) is SequentialNet:
            changes["module"] = FastPoolNet(module.stages)
            changes["prepare_params"] = with_stored_kernels
        model._derived[key] = model.derive(**changes)
    return model._derived[key]
