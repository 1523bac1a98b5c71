"""CPU acceleration, applied by the front ends (CLI, gallery, benchmarks) to a model once.

``accelerate(model)`` returns the same network with the same parameters and the same results (to
float rounding), faster on this hardware:

- on CPU, XLA's Eigen convolutions for networks whose convolutions are all dense and, for
  SqueezeNet 1.1, XLA's legacy fusion emitters (shorter compiles) (``xla``), carried as
  ``model.compiler_options`` for whoever jits a function of the model;
- for every model, its traced forward pass re-evaluated with convolutions and max-pools whose
  backward passes XLA-CPU runs fast, ReLUs fused into the max-pools they feed and channel
  concatenations never materialised (``rewrite``, ``ops``); ``with_backward(rule)`` of the
  result applies the guided / deconvnet ReLU rule in the same pass;
- for the bundled sequential networks, convolutions that use kernels precomputed once per image
  optimisation (``model.prepare_params``: transposed kernels, Winograd forms for VGG's deep
  layers) (``fast_layers``, ``winograd``).

The faster backward passes are ``jax.custom_vjp`` rules, so the accelerated model is for reverse
mode (``jax.grad``, ``jax.vjp``, every jaxviz technique): ``jax.jvp``, ``jax.jacfwd`` and
Hessian-vector products raise JAX's TypeError on it; use the plain model for those.

Technique modules never import this package; they only read ``model.compiler_options`` and call
``model.prepare_params``, which are neutral on a model that was not accelerated.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxviz.accel import (
    rewrite as _rewrite,  # the module (a function named rewrite here would shadow it)
)
from jaxviz.accel import xla
from jaxviz.accel.fast_layers import FastPoolNet, with_stored_kernels
from jaxviz.interface import Model, ModelLike, as_model
from jaxviz.interface.model import ALL
from jaxviz.models.network import SequentialNet
from jaxviz.models.registry import ModelSpec, recorded_facts

__all__ = ["accelerate"]


def accelerate(model: ModelLike) -> Model:
    """``model`` with this package's CPU speed-ups: the same network, parameters and results (to
    float rounding), with XLA options for whoever jits its functions (``model.compiler_options``),
    a forward pass whose backward runs fast on XLA-CPU, and precomputed kernels for the bundled
    sequential networks (see ``jaxviz.accel``'s module docstring). Cached: the same object for the
    same model; an accelerated model is returned as is. Reverse-mode differentiation only
    (``jax.jvp`` / ``jax.jacfwd`` need the plain model)."""
    model = as_model(model)
    if getattr(model, "accelerated", False):
        return model
    key = ("accelerate",)
    if key not in model._derived:
        changes = {"accelerated": True}
        facts = recorded_facts(model.spec) if isinstance(getattr(model, "spec", None), ModelSpec) else None
        if facts is not None:  # a registry network: known without tracing it
            grouped = facts["grouped_convolutions"]
        else:
            h, w = model.input_hw()
            probe = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
            try:
                grouped = xla.has_grouped_convolutions(model.apply, model.params, probe)
            except Exception:  # a model that needs another input shape: leave XLA's default choice
                grouped = True
        legacy = facts is not None and model.spec.name in xla.LEGACY_FUSION_NETWORKS
        changes["compiler_options"] = xla.compiler_options(dense_convolutions=not grouped,
                                                           legacy_fusion_emitters=legacy)
        module = getattr(model, "module", None)
        if isinstance(module, SequentialNet) and type(module) is SequentialNet:
            changes["module"] = FastPoolNet(module.stages)
            changes["prepare_params"] = with_stored_kernels
        fast = model.derive(**changes)
        fast._plain_forward = fast._forward  # (the module swapped in, if any)
        fast._forward = _rewritten_forward(fast._plain_forward, "gradient")
        fast.__class__ = _accelerated_class(type(model))
        model._derived[key] = fast
    return model._derived[key]


def _rewritten_forward(base, rule: str):
    """A ``Model._forward`` evaluated through ``rewrite`` (inputs and injected arrays live)."""
    @functools.lru_cache(maxsize=64)
    def pass_of(capture, names, stop_after):
        # One jitted object per pass, only ever traced: jit's cache then hands ``rewrite`` the
        # same jaxpr whenever a technique runs this pass again at the same shapes (a target's
        # features, the step's gradient, the final loss terms): a VGG19 pass traces in 0.1-0.4 s.
        def fn(p, xx, values):
            return base(p, xx, capture, dict(zip(names, values)), stop_after)
        return jax.jit(fn)

    def forward(params, x, capture, inject, stop_after):
        if capture == ALL:  # probing shapes: nothing to speed up
            return base(params, x, capture, inject, stop_after)
        names = tuple(inject)
        return _rewrite.rewrite(pass_of(capture, names, stop_after), rule, argnums=(1, 2))(
            params, x, tuple(inject[n] for n in names))
    return forward


class _Accelerated:
    """Mixed into an accelerated model's class: ``with_backward(rule)`` (``Model``'s, cached
    there) rewrites the plain forward pass once with the rule (the ReLUs fused into max-pools
    take the rule too)."""

    def _forward_with_rule(self, rule):
        return _rewritten_forward(self._plain_forward, rule)


_CLASSES: dict = {}


def _accelerated_class(cls: type) -> type:
    if issubclass(cls, _Accelerated):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Accelerated{cls.__name__}", (_Accelerated, cls), {"__module__": __name__})
    return _CLASSES[cls]
