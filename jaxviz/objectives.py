"""Composable objectives on images in model-input space (Lucid/Lucent's ``objectives``).

An ``Objective`` is a function ``(x (N, H, W, C), keys (N,)) -> (N,)`` — one value per image — with
``+``, ``-``, ``*`` (by numbers) and unary ``-``, so it can be passed straight to
``jaxviz.optimize.optimize`` as ``loss_fn``. Every objective returns its *natural* quantity (a
score, an activation, a distance, a norm); the engine MINIMISES, so write the sign you mean::

    loss = -class_score(model.apply, params, 285) + 1e-3 * l2()          # Simonyan et al. 2014
    loss = feature_match(model.apply, params, "conv3_1", x0) + 1e-2 * tv(2.0)  # Mahendran & Vedaldi
    loss = -deepdream(model.apply, params, "fire7")

Conventions: sums over pixels and channels are per image; ``index``/``channel`` may be an int (all
images) or an (N,) array (one target per image: several classes optimise together).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from jaxviz.targets import class_scores

Array = jax.Array
ApplyFn = Callable[..., Array]


@dataclass(frozen=True)
class Objective:
    """A per-image objective ``fn(x, keys) -> (N,)`` with arithmetic."""

    fn: Callable[[Array, Array | None], Array]
    name: str = "objective"

    def __call__(self, x: Array, keys: Array | None = None) -> Array:
        return self.fn(x, keys)

    def __add__(self, other) -> "Objective":
        if isinstance(other, Objective):
            return Objective(lambda x, k: self.fn(x, k) + other.fn(x, k), f"{self.name} + {other.name}")
        return Objective(lambda x, k: self.fn(x, k) + other, f"{self.name} + {other}")

    __radd__ = __add__

    def __neg__(self) -> "Objective":
        return Objective(lambda x, k: -self.fn(x, k), f"-{self.name}")

    def __sub__(self, other) -> "Objective":
        return self + (-other)

    def __rsub__(self, other) -> "Objective":
        return (-self) + other

    def __mul__(self, other) -> "Objective":
        if isinstance(other, Objective):
            return Objective(lambda x, k: self.fn(x, k) * other.fn(x, k), f"({self.name}) * ({other.name})")
        return Objective(lambda x, k: other * self.fn(x, k), f"{other} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> "Objective":
        return self * (1.0 / other)


def _index(index, n: int) -> Array:
    return jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))


def class_score(apply_fn: ApplyFn, params: dict, index: int | Array, score: str = "logit") -> Objective:
    """s_c(x): the class logit (default; Simonyan et al. use the unnormalised score), prob or logprob."""
    def fn(x, keys):
        return class_scores(apply_fn(params, x), _index(index, x.shape[0]), score)
    return Objective(fn, f"class_score({index})")


def channel(apply_fn: ApplyFn, params: dict, layer: str, index: int | Array,
            y: int | None = None, x: int | None = None) -> Objective:
    """Mean activation of channel ``index`` at ``layer`` (or the unit at (y, x) when given)."""
    def fn(images, keys):
        acts = apply_fn(params, images, stop=layer)
        c = _index(index, images.shape[0])
        if acts.ndim == 4:
            acts = acts[:, y, x, :] if y is not None else acts.mean(axis=(1, 2))
        return jnp.take_along_axis(acts, c[:, None], axis=-1)[:, 0]
    return Objective(fn, f"channel({layer}:{index})")


def neuron(apply_fn: ApplyFn, params: dict, layer: str, index: int | Array, y: int, x: int) -> Objective:
    """Activation of one unit (``layer``, channel ``index``, position (y, x))."""
    return channel(apply_fn, params, layer, index, y, x)


def activation(apply_fn: ApplyFn, params: dict, layer: str) -> Objective:
    """Mean activation of the whole layer."""
    return Objective(lambda x, k: apply_fn(params, x, stop=layer).reshape(x.shape[0], -1).mean(1),
                     f"activation({layer})")


def deepdream(apply_fn: ApplyFn, params: dict, layer: str) -> Objective:
    """½ Σ f_i(x)² over the units of ``layer``: its gradient w.r.t. the layer is the activation."""
    def fn(x, keys):
        a = apply_fn(params, x, stop=layer)
        return 0.5 * jnp.sum(jnp.square(a).reshape(x.shape[0], -1), axis=1)
    return Objective(fn, f"deepdream({layer})")


def feature_distance(apply_fn: ApplyFn, params: dict, layer: str, target: Array,
                     normalize: bool = True) -> Objective:
    """‖Φ_l(x) − Φ0‖² per image, divided by ‖Φ0‖² when ``normalize`` (Mahendran & Vedaldi 2015).

    ``target``: Φ0, the activation of ``layer`` to match, (N, ...) or broadcastable.
    """
    target = jnp.asarray(target)

    def fn(x, keys):
        a = apply_fn(params, x, stop=layer)
        t = jnp.broadcast_to(target, a.shape).astype(a.dtype)
        d = jnp.sum(jnp.square(a - t).reshape(x.shape[0], -1), axis=1)
        if normalize:
            d = d / jnp.maximum(jnp.sum(jnp.square(t).reshape(x.shape[0], -1), axis=1), 1e-12)
        return d
    return Objective(fn, f"feature_distance({layer})")


def feature_match(apply_fn: ApplyFn, params: dict, layer: str, x0: Array, normalize: bool = True) -> Objective:
    """‖Φ_l(x) − Φ_l(x0)‖² (normalised by ‖Φ_l(x0)‖²) for reference images ``x0`` (model input)."""
    return feature_distance(apply_fn, params, layer, jax.lax.stop_gradient(apply_fn(params, x0, stop=layer)),
                            normalize)


def l2(center: Array | float = 0.0) -> Objective:
    """‖x − center‖² per image (sum over pixels and channels)."""
    def fn(x, keys):
        return jnp.sum(jnp.square(x - center).reshape(x.shape[0], -1), axis=1)
    return Objective(fn, "l2")


def total_variation(x: Array, beta: float = 2.0, eps: float = 1e-12) -> Array:
    """R_TV^β(x) = Σ_ij ((x_{i,j+1} − x_ij)² + (x_{i+1,j} − x_ij)²)^{β/2}, summed over channels.

    (N, H, W, C) -> (N,). ``eps`` keeps the gradient finite where both differences vanish (β < 2).
    """
    dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
    dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
    d2 = dy * dy + dx * dx
    r = d2 if beta == 2.0 else (d2 + eps) ** (beta / 2.0)
    return jnp.sum(r.reshape(x.shape[0], -1), axis=1)


def tv(beta: float = 2.0, eps: float = 1e-12) -> Objective:
    """Total variation TV^β (Mahendran & Vedaldi 2015) as an objective."""
    return Objective(lambda x, k: total_variation(x, beta, eps), f"tv({beta})")


def constant(value: float) -> Objective:
    return Objective(lambda x, k: jnp.full((x.shape[0],), value, x.dtype), str(value))
