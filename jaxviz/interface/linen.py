"""A ``flax.linen`` module and its variables as a jaxviz ``Model``, without editing the module.

Layers are submodule calls, named by module path with ``/`` (``"features.3"``, ``"block1/conv"``),
as in Flax's own variable trees. Activations are read and replaced with
``nn.intercept_methods``: the interceptor sees every submodule's ``__call__``, records its output
or returns the injected array instead of running it, and stops the pass once every requested
activation is in. A submodule called more than once in a pass (weight sharing) is refused as a
layer, since "its output" would be ambiguous.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError, ParamShapeError
from jaxviz.interface.model import ALL, Model, StopForward, current_trace

Array = jax.Array
PyTree = Any


def _zeros(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    return jnp.zeros(shape, dtype)


class QuickParamCheck:
    """Mixin for linen layers: when ``apply`` finds a parameter, flax checks its shape against
    ``jax.eval_shape`` of the initialiser, which traces the random initialiser again for every
    parameter of every trace: 0.15-0.25 s of the first trace of SqueezeNet 1.1 or
    EfficientNet-Lite0 in each process, paid again by a process whose programs all come from the
    persistent cache. For an initialiser called ``init(key, shape[, dtype])`` with the shape as a
    tuple (all of flax's), a zeros initialiser of that shape stands in for the check (same check,
    same error, same program); any other call, and ``init``, run the layer's own initialiser."""

    def param(self, name: str, init_fn: Callable, *init_args, unbox: bool = True, **init_kwargs):
        if (self.has_variable("params", name) and not init_kwargs and 1 <= len(init_args) <= 2
                and isinstance(init_args[0], tuple)):
            init_fn = _zeros
        return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)


class Conv(QuickParamCheck, nn.Conv):
    """``flax.linen.Conv`` (same parameters, same program) with the quick parameter check."""


class Dense(QuickParamCheck, nn.Dense):
    """``flax.linen.Dense`` (same parameters, same program) with the quick parameter check."""


def variables_of(params: PyTree) -> dict:
    """Accept Flax variables ({"params": ..., "batch_stats": ...}) or a bare params tree."""
    if isinstance(params, Mapping) and "params" in params:
        return params
    return {"params": params}


class LinenModel(Model):
    """``module.apply(variables, x, **call_kwargs)`` with named layers (module paths)."""

    def __init__(self, module: nn.Module, variables: PyTree, *, call_kwargs: Mapping[str, Any] | None = None,
                 **facts):
        facts.setdefault("name", type(module).__name__)
        super().__init__(variables, **facts)
        self.module = module
        self.call_kwargs = dict(call_kwargs or {})

    def _forward(self, params, x, capture, inject, stop_after):
        captured: dict[str, Array] = {}
        calls: dict[str, int] = {}
        everything = capture == ALL
        wanted = set() if everything else set(capture)
        named = wanted | set(inject)
        remaining = set(stop_after)
        outer = current_trace()

        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not module.path:
                return next_fun(*args, **kwargs)
            path = "/".join(module.path)
            if not everything and path not in named:
                return next_fun(*args, **kwargs)
            if self._nested_call(outer, path, named, everything):  # inside the model's nn.remat, nn.scan, ...
                return next_fun(*args, **kwargs)
            calls[path] = calls.get(path, 0) + 1
            if calls[path] > 1 and everything:
                self._repeated.add(path)
            if calls[path] > 1 and path in named:
                raise JaxvizError(f"layer {path} of {self.name} runs {calls[path]} times in one forward "
                                  "pass; name a module that runs once")
            out = inject[path] if path in inject else next_fun(*args, **kwargs)
            if everything or path in wanted:
                captured.setdefault(path, out)
                if everything and self._probe_sink is not None:
                    self._probe_sink.setdefault(path, out)
            remaining.discard(path)
            if stop_after and not remaining:
                raise StopForward
            return out

        try:
            with nn.intercept_methods(interceptor):
                out = self.module.apply(variables_of(params), x, **self.call_kwargs)
        except StopForward:
            out = None
        except flax.errors.ScopeParamShapeError as e:  # e.g. a flatten-dense head at another size
            raise ParamShapeError(
                f"{self.name}'s parameters do not fit its module on {x.shape[1]}x{x.shape[2]} inputs "
                f"({str(e).split(' (https')[0]}): if a parameter's shape depends on the input size, give "
                "the size it was built for (input_size= when wrapping it, or size=); else the variables "
                "are not this module's") from None
        except flax.errors.ModifyScopeVariableError as e:  # BatchNorm in training mode updates batch_stats
            raise JaxvizError(
                f"{self.name} tries to update its variables ({str(e).split(' (https')[0]}): a BatchNorm in "
                "training mode; run it in inference mode, e.g. from_linen(..., call_kwargs={'train': False}) "
                "or use_running_average=True") from None
        return out, captured

    def layer_params(self, params, layer):
        node = variables_of(params)["params"]
        for part in self.resolve_layer(layer).split("/"):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def replace_layer_params(self, params, layer, new):
        parts = self.resolve_layer(layer).split("/")
        bare = not (isinstance(params, Mapping) and "params" in params)
        variables = dict(variables_of(params))

        def put(node, path):
            node = dict(node)
            node[path[0]] = new if len(path) == 1 else put(node[path[0]], path[1:])
            return node
        variables["params"] = put(variables["params"], parts)
        return variables["params"] if bare else variables


def from_linen(module: nn.Module, variables: PyTree, *, call_kwargs: Mapping[str, Any] | None = None,
               **facts) -> Model:
    """A ``Model`` from a ``flax.linen`` module and its variables.

    Args:
      module: the (unbound) module; called as ``module.apply(variables, x, **call_kwargs)`` on
        preprocessed (N, H, W, 3) images. BatchNorm must be in inference mode (for example
        ``call_kwargs={"train": False}``): images must not influence each other.
      variables: ``{"params": ..., "batch_stats": ...}`` or a bare params tree.
      facts: ``name``, ``preprocessing`` (default: RGB in [0, 1] as is), ``input_size``,
        ``num_classes``, ``labels``, ``aliases``, ``feature_layer``.
    """
    if not isinstance(module, nn.Module):
        raise JaxvizError(f"from_linen expects a flax.linen Module, got {type(module).__name__}")
    return LinenModel(module, variables, call_kwargs=call_kwargs, **facts)
