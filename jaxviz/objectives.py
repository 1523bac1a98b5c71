"""Composable objectives on images in model-input space (Lucid/Lucent's ``objectives``).

An ``Objective`` is a function ``(x (N, H, W, C), keys (N,)) -> (N,)`` — one value per image — with
``+``, ``-``, ``*`` (by numbers, (N,) arrays or objectives) and unary ``-``, so it can be passed
straight to ``jaxviz.optimize.optimize`` as ``loss_fn``. Every objective returns its *natural*
quantity (a score, an activation, a distance, a norm); the engine MINIMISES, so write the sign you
mean::

    loss = -class_score(model, params, 285) + 1e-3 * l2()                  # Simonyan et al. 2014
    loss = feature_match(model, params, "conv3_1", x0) + 1e-2 * tv(2.0)   # Mahendran & Vedaldi
    loss = -deepdream(model, params, "fire7")

``model`` is a ``jaxviz.interface.Model`` (any adapter); objectives that need no layer
(``class_score``) also take a bare ``apply_fn(params, x)``. Layers are resolved (aliases, close
names in the error) when the objective is built.

An objective is a pure function ``fn(x, keys, data)`` and its arrays ``data`` (weights, targets,
term weights): the engine passes ``data`` to its jitted step as an argument, so the weights are not
baked into the compiled program as constants, and ``fn`` is the same object for the same structure
(model, layer, composition), so a second run with other weights, classes or term weights reuses the
compiled step.

Conventions: sums over pixels and channels are per image; ``index``/``channel`` may be an int (all
images) or an (N,) array (one target per image: several classes optimise together).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.targets import class_scores_of, neuron_scores

Array = jax.Array
PyTree = Any
PureFn = Callable[[Array, "Array | None", PyTree], Array]


@dataclass(frozen=True, eq=False)
class Objective:
    """A per-image objective with arithmetic.

    ``Objective(fn)`` wraps a user's ``fn(x, keys) -> (N,)``; the built-in objectives are pure
    functions ``fn(x, keys, data)`` with their arrays in ``data`` (``pure=True``). Either way
    ``objective(x, keys=None)`` evaluates it and ``objective.pure_fn`` / ``objective.data`` are
    what the engine passes to its jitted step.
    """

    fn: Callable
    name: str = "objective"
    data: PyTree = None
    pure: bool = False

    @property
    def pure_fn(self) -> PureFn:
        """``fn(x, keys, data)``: the same object for the same structure (the engine's cache key)."""
        return self.fn if self.pure else _plain(self.fn)

    def __call__(self, x: Array, keys: Array | None = None) -> Array:
        return self.fn(x, keys, self.data) if self.pure else self.fn(x, keys)

    def __add__(self, other) -> "Objective":
        if isinstance(other, Objective):
            return _make(_sum(self.pure_fn, other.pure_fn), (self.data, other.data), f"{self.name} + {other.name}")
        return _make(_shift(self.pure_fn), (self.data, other), f"{self.name} + {_show(other)}")

    __radd__ = __add__

    def __neg__(self) -> "Objective":
        return _make(_neg(self.pure_fn), self.data, f"-{self.name}")

    def __sub__(self, other) -> "Objective":
        return self + (-other)

    def __rsub__(self, other) -> "Objective":
        return (-self) + other

    def __mul__(self, other) -> "Objective":
        if isinstance(other, Objective):
            return _make(_prod(self.pure_fn, other.pure_fn), (self.data, other.data),
                         f"({self.name}) * ({other.name})")
        return _make(_scale(self.pure_fn), (self.data, other), f"{_show(other)} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> "Objective":
        return self * (1.0 / other)


def _make(fn: PureFn, data: PyTree, name: str) -> Objective:
    return Objective(fn, name, data, pure=True)


@functools.lru_cache(maxsize=256)
def _plain(fn: Callable) -> PureFn:
    return lambda x, k, d: fn(x, k)


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "w"


# Combinators, cached: the same pure function for the same structure (the engine's cache key).

@functools.lru_cache(maxsize=256)
def _sum(fa: PureFn, fb: PureFn) -> PureFn:
    return lambda x, k, d: fa(x, k, d[0]) + fb(x, k, d[1])


@functools.lru_cache(maxsize=256)
def _prod(fa: PureFn, fb: PureFn) -> PureFn:
    return lambda x, k, d: fa(x, k, d[0]) * fb(x, k, d[1])


@functools.lru_cache(maxsize=256)
def _shift(fa: PureFn) -> PureFn:
    return lambda x, k, d: fa(x, k, d[0]) + d[1]


@functools.lru_cache(maxsize=256)
def _scale(fa: PureFn) -> PureFn:
    return lambda x, k, d: d[1] * fa(x, k, d[0])


@functools.lru_cache(maxsize=256)
def _neg(fa: PureFn) -> PureFn:
    return lambda x, k, d: -fa(x, k, d)


def _index(index, n: int) -> Array:
    return jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))


def _per_image_index(index) -> Array:
    index = jnp.asarray(index, jnp.int32)
    if index.ndim > 1:
        raise JaxvizError(f"index must be an int or (N,) ints, got shape {index.shape}")
    return index


@functools.lru_cache(maxsize=64)
def _jitted(fn: PureFn) -> Callable:
    return jax.jit(fn)


def evaluate(objective: Objective, x: Array, keys: Array | None = None) -> Array:
    """``objective(x, keys)`` jitted (compiled once per structure and shape; the data traced)."""
    return _jitted(objective.pure_fn)(jnp.asarray(x), keys, objective.data)


# --------------------------------------------------------------------------------------------
# Objectives of the network

@functools.lru_cache(maxsize=64)
def _class_score_fn(model, score: str) -> PureFn:
    def fn(x, keys, data):
        params, index = data
        return class_scores_of(model, params, x, _index(index, x.shape[0]), score)[0]
    return fn


def class_score(model: ModelLike, params: PyTree, index: int | Array, score: str = "logit") -> Objective:
    """s_c(x): the class logit (default; Simonyan et al. use the unnormalised score), prob or logprob.

    ``model``: a ``Model`` or a bare ``apply_fn(params, x) -> logits``.
    """
    if score not in ("logit", "prob", "logprob"):
        raise JaxvizError(f"unknown score {score!r}; use logit, prob or logprob")
    model = as_model(model)
    return _make(_class_score_fn(model, score), (params, _per_image_index(index)), f"class_score({index})")


@functools.lru_cache(maxsize=64)
def _channel_fn(model, layer: str, y: int | None, x: int | None) -> PureFn:
    def fn(images, keys, data):
        params, index = data
        acts = model.activation(params, images, layer)
        return neuron_scores(acts, _index(index, images.shape[0]), y, x)
    return fn


def channel(model: ModelLike, params: PyTree, layer: str, index: int | Array,
            y: int | None = None, x: int | None = None) -> Objective:
    """Mean activation of channel ``index`` at ``layer`` (or the unit at (y, x) when given)."""
    model = as_model(model)
    layer = model.resolve_layer(layer)
    return _make(_channel_fn(model, layer, y, x), (params, _per_image_index(index)),
                     f"channel({layer}:{index})")


def neuron(model: ModelLike, params: PyTree, layer: str, index: int | Array, y: int, x: int) -> Objective:
    """Activation of one unit (``layer``, channel ``index``, position (y, x))."""
    return channel(model, params, layer, index, y, x)


@functools.lru_cache(maxsize=64)
def _activation_fn(model, layer: str) -> PureFn:
    return lambda x, k, params: model.activation(params, x, layer).reshape(x.shape[0], -1).mean(1)


def activation(model: ModelLike, params: PyTree, layer: str) -> Objective:
    """Mean activation of the whole layer."""
    model = as_model(model)
    layer = model.resolve_layer(layer)
    return _make(_activation_fn(model, layer), params, f"activation({layer})")


@functools.lru_cache(maxsize=64)
def _deepdream_fn(model, layer: str) -> PureFn:
    def fn(x, keys, params):
        a = model.activation(params, x, layer)
        return 0.5 * jnp.sum(jnp.square(a).reshape(x.shape[0], -1), axis=1)
    return fn


def deepdream(model: ModelLike, params: PyTree, layer: str) -> Objective:
    """½ Σ f_i(x)² over the units of ``layer``: its gradient w.r.t. the layer is the activation."""
    model = as_model(model)
    layer = model.resolve_layer(layer)
    return _make(_deepdream_fn(model, layer), params, f"deepdream({layer})")


@functools.lru_cache(maxsize=64)
def _feature_distance_fn(model, layer: str, normalize: bool) -> PureFn:
    def fn(x, keys, data):
        params, target = data
        a = model.activation(params, x, layer)
        t = jnp.broadcast_to(target, a.shape).astype(a.dtype)
        d = jnp.sum(jnp.square(a - t).reshape(x.shape[0], -1), axis=1)
        if normalize:
            d = d / jnp.maximum(jnp.sum(jnp.square(t).reshape(x.shape[0], -1), axis=1), 1e-12)
        return d
    return fn


def feature_distance(model: ModelLike, params: PyTree, layer: str, target: Array, normalize: bool = True) -> Objective:
    """‖Φ_l(x) − Φ0‖² per image, divided by ‖Φ0‖² when ``normalize`` (Mahendran & Vedaldi 2015).

    ``target``: Φ0, the activation of ``layer`` to match, (N, ...) or broadcastable.
    """
    model = as_model(model)
    layer = model.resolve_layer(layer)
    return _make(_feature_distance_fn(model, layer, bool(normalize)), (params, jnp.asarray(target)),
                     f"feature_distance({layer})")


@functools.lru_cache(maxsize=64)
def _activation_jit(model, layer: str) -> Callable:
    return jax.jit(lambda params, x: model.activation(params, x, layer))


def layer_activation(model: ModelLike, params: PyTree, x: Array, layer: str) -> Array:
    """``model.activation(params, x, layer)``, jitted (compiled once per model, layer and shape)."""
    model = as_model(model)
    return _activation_jit(model, model.resolve_layer(layer))(params, jnp.asarray(x))


def feature_match(model: ModelLike, params: PyTree, layer: str, x0: Array, normalize: bool = True) -> Objective:
    """‖Φ_l(x) − Φ_l(x0)‖² (normalised by ‖Φ_l(x0)‖²) for reference images ``x0`` (model input)."""
    target = jax.lax.stop_gradient(layer_activation(model, params, x0, layer))
    if normalize and not isinstance(target, jax.core.Tracer):
        norms = np.square(np.asarray(target)).reshape(target.shape[0], -1).sum(axis=1)  # host: no program
        if not norms.all():  # the relative distance would divide by zero: NaN images
            raise JaxvizError(f"layer {layer}'s features of reference image(s) {np.flatnonzero(norms == 0).tolist()} "
                              "are all zero, so the normalised feature distance is undefined; use another layer")
    return feature_distance(model, params, layer, target, normalize)


# --------------------------------------------------------------------------------------------
# Objectives of the image alone

def _l2_fn(x, keys, center):
    return jnp.sum(jnp.square(x - center).reshape(x.shape[0], -1), axis=1)


def l2(center: Array | float = 0.0) -> Objective:
    """‖x − center‖² per image (sum over pixels and channels)."""
    return _make(_l2_fn, center, "l2")


def total_variation(x: Array, beta: float = 2.0, eps: float = 1e-12) -> Array:
    """R_TV^β(x) = Σ_ij ((x_{i,j+1} − x_ij)² + (x_{i+1,j} − x_ij)²)^{β/2}, summed over channels.

    (N, H, W, C) -> (N,). ``eps`` keeps the gradient finite where both differences vanish (β < 2).
    """
    dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
    dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
    d2 = dy * dy + dx * dx
    r = d2 if beta == 2.0 else (d2 + eps) ** (beta / 2.0)
    return jnp.sum(r.reshape(x.shape[0], -1), axis=1)


@functools.lru_cache(maxsize=64)
def _tv_fn(beta: float, eps: float) -> PureFn:
    return lambda x, k, d: total_variation(x, beta, eps)


def tv(beta: float = 2.0, eps: float = 1e-12) -> Objective:
    """Total variation TV^β (Mahendran & Vedaldi 2015) as an objective (β is static)."""
    return _make(_tv_fn(float(beta), float(eps)), None, f"tv({beta:g})")


def _constant_fn(x, keys, value):
    return jnp.broadcast_to(jnp.asarray(value, x.dtype), (x.shape[0],))


def constant(value: float) -> Objective:
    return _make(_constant_fn, value, f"{value}")


# --------------------------------------------------------------------------------------------
# Checks shared by the techniques that optimise the input

def require_nonempty(model: ModelLike, layers: Sequence[str] | None, size: tuple[int, int]) -> None:
    """Refuse an input size at which a layer's output is empty (issue 13: NaN scores otherwise).

    ``layers`` None checks every named layer (the output depends on all of them). Models without
    named layers (a plain apply_fn) are not checked.

    Raises:
      JaxvizError: naming the layer and the smallest (square) size at which it is not empty.
    """
    model = as_model(model)
    if not model.has_layers:
        return
    h, w = size
    shapes = model.layer_shapes((h, w))
    given = {n: n for n in shapes} if layers is None else {model.resolve_layer(n): n for n in layers}
    empty = [n for n in given if n in shapes and math.prod(shapes[n]) == 0]
    if not empty:
        return
    need = max(model.smallest_input(n) for n in empty)
    first = empty[0]
    shape = "x".join(str(s) for s in shapes[first])
    if layers is None:
        raise JaxvizError(f"{model.name} has empty layers at {h}x{w} px (from {first} on, output shape {shape}), "
                          f"so its output is undefined; use an image of at least {need}x{need} px")
    name = given[first] if given[first] == first else f"{given[first]} ({first})"
    raise JaxvizError(f"layer {name} of {model.name} is empty at {h}x{w} px (output shape {shape}); "
                      f"use an image of at least {need}x{need} px")


def num_outputs(model: ModelLike, params: PyTree, x: Array) -> int:
    """The size of the model's output per image (the number of classes of a classifier), from an
    abstract evaluation on ``x``'s shape (no FLOPs); also for a bare apply_fn with given params."""
    model = as_model(model)
    shape = None
    if params is model.params and model.has_layers:  # the model's probe (recorded for a registry network)
        try:
            shape = (1,) + model.output_shape(tuple(x.shape[1:3]))
        except JaxvizError:  # a probe that stops early (a layer with non-array outputs): trace the output
            pass
    if shape is None:
        shape = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), jnp.float32)).shape
    if len(shape) != 2:
        raise JaxvizError(f"{model.name} is not a classifier: its output has shape {tuple(shape[1:])} "
                          "per image, not (classes,)")
    return int(shape[1])
