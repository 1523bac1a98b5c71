"""Non-linearities with modified backward passes, and a max-pool with a cheap backward pass.

Guided backprop (Springenberg et al. 2015, "Striving for simplicity") and the deconvnet
(Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks") differ from the
gradient only in how the backward signal crosses each ReLU. Both are ``jax.custom_vjp`` functions
with the ordinary forward pass, injected into a model with ``model.with_activations(relu=...,
relu6=...)`` — no hooks, no mutation of the user's model:

- gradient:    g_in = g * (x > 0)                        (ReLU6: also * (x < 6))
- guided:      g_in = g * (x > 0) * (g > 0)              (ReLU6: also * (x < 6))
- deconvnet:   g_in = g * (g > 0)                        (the same for ReLU6)

``fast_pool_model(model)`` returns the same model (same params, same forward values) whose
max-pools have a ``custom_vjp`` built from strided slices and pads instead of XLA's
``select_and_scatter``, which is slow on XLA-CPU (measured in ``scripts/bench_attribution.py``).
The gradient goes to the first maximum of each window in row-major order, as select-and-scatter
does; for post-ReLU inputs ties only occur between zeros, whose ReLU gradient is zero anyway.
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from jaxviz.models import layers
from jaxviz.models.network import SequentialNet, Stage

Array = jax.Array
Rule = Literal["gradient", "guided", "deconv"]


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """ReLU whose backward pass is guided backprop's: g * (x > 0) * (g > 0)."""
    return jax.nn.relu(x)


def _guided_relu_fwd(x):
    return jax.nn.relu(x), x


def _guided_relu_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


@jax.custom_vjp
def guided_relu6(x: Array) -> Array:
    """ReLU6 whose backward pass is guided: g * (0 < x < 6) * (g > 0)."""
    return jax.nn.relu6(x)


def _guided_relu6_fwd(x):
    return jax.nn.relu6(x), x


def _guided_relu6_bwd(x, g):
    return (jnp.where((x > 0) & (x < 6) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu6.defvjp(_guided_relu6_fwd, _guided_relu6_bwd)


@jax.custom_vjp
def deconv_relu(x: Array) -> Array:
    """ReLU whose backward pass is the deconvnet's: the ReLU of the incoming signal, g * (g > 0)."""
    return jax.nn.relu(x)


def _deconv_fwd(x):
    return jax.nn.relu(x), None


def _deconv_bwd(_, g):
    return (jnp.where(g > 0, g, jnp.zeros_like(g)),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


@jax.custom_vjp
def deconv_relu6(x: Array) -> Array:
    """ReLU6 whose backward pass is the deconvnet's: g * (g > 0) (the forward input is ignored)."""
    return jax.nn.relu6(x)


def _deconv6_fwd(x):
    return jax.nn.relu6(x), None


deconv_relu6.defvjp(_deconv6_fwd, _deconv_bwd)

ACTIVATIONS = {
    "gradient": {"relu": jax.nn.relu, "relu6": jax.nn.relu6},
    "guided": {"relu": guided_relu, "relu6": guided_relu6},
    "deconv": {"relu": deconv_relu, "relu6": deconv_relu6},
}


# ---------------------------------------------------------------- max-pool with a cheap backward

@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: Array, kernel: int, stride: int, ceil_mode: bool = False) -> Array:
    """``torch.nn.MaxPool2d(kernel, stride, ceil_mode=...)`` on NHWC; same values as layers.max_pool."""
    return _max_pool_fwd(x, kernel, stride, ceil_mode)[0]


def _max_pool_fwd(x, kernel, stride, ceil_mode):
    out = layers.max_pool(x, kernel, stride, ceil_mode)
    return out, (x, out)


def _max_pool_bwd(kernel, stride, ceil_mode, res, g):
    """Route g to the first maximum of each window (row-major, as XLA and torch), one strided
    slice per window offset at output resolution, then interleave the stride x stride phase
    planes once: no select_and_scatter, which is slow on XLA-CPU."""
    x, y = res
    n, h, w, c = x.shape
    oh, ow = y.shape[1:3]
    s, t_max = stride, -(-kernel // stride) - 1
    need_h, need_w = s * (oh - 1) + kernel, s * (ow - 1) + kernel
    xp = jnp.pad(x, ((0, 0), (0, max(need_h - h, 0)), (0, max(need_w - w, 0)), (0, 0)),
                 constant_values=-jnp.inf)
    taken = jnp.zeros(y.shape, bool)
    contrib = {}
    for di in range(kernel):
        for dj in range(kernel):
            v = xp[:, di:di + s * (oh - 1) + 1:s, dj:dj + s * (ow - 1) + 1:s]
            hit = (v == y) & ~taken
            taken = taken | hit
            contrib[di, dj] = jnp.where(hit, g, 0.0)
    # input row s*q + p receives from window offset o = p + s*t of output row q - t
    rows = []
    for p in range(s):
        cols = []
        for r in range(s):
            plane = jnp.zeros((n, oh + t_max, ow + t_max, c), g.dtype)
            for ti in range(t_max + 1):
                for tj in range(t_max + 1):
                    o_i, o_j = p + s * ti, r + s * tj
                    if o_i < kernel and o_j < kernel:
                        plane = plane + jnp.pad(contrib[o_i, o_j],
                                                ((0, 0), (ti, t_max - ti), (tj, t_max - tj), (0, 0)))
            cols.append(plane)
        rows.append(jnp.stack(cols, axis=3).reshape(n, oh + t_max, s * (ow + t_max), c))
    full = jnp.stack(rows, axis=2).reshape(n, s * (oh + t_max), s * (ow + t_max), c)
    # rows/columns no window reaches (floor mode) get zero gradient
    full = jnp.pad(full, ((0, 0), (0, max(h - full.shape[1], 0)), (0, max(w - full.shape[2], 0)), (0, 0)))
    return (full[:, :h, :w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class FastPoolNet(SequentialNet):
    """``SequentialNet`` whose max-pools use :func:`max_pool` (same parameters, same values)."""

    def _run(self, stage: Stage, x: Array) -> Array:
        if stage.kind == "maxpool":
            kernel, stride, ceil_mode = stage.args
            return max_pool(x, kernel, stride, ceil_mode)
        return super()._run(stage, x)


@functools.lru_cache(maxsize=32)
def _variant(model, rule: str, fast_pool: bool):
    from jaxviz.models.registry import Model
    acts = ACTIVATIONS[rule]
    if fast_pool:
        return Model(model.spec, model.params, FastPoolNet(model.spec.stages, **acts))
    return model.with_activations(**acts)


def backward_model(model, rule: Rule = "gradient", fast_pool: bool = True):
    """``model`` with the ReLU/ReLU6 backward ``rule`` and (optionally) the fast max-pool backward.

    The forward pass is unchanged; cached, so the returned model (and its ``apply``) is the same
    object on every call and jitted functions taking it as a static argument compile once.
    """
    if rule not in ACTIVATIONS:
        raise ValueError(f"unknown backward rule {rule!r}; use one of {', '.join(ACTIVATIONS)}")
    return _variant(model, rule, bool(fast_pool))


def fast_pool_model(model):
    """``model`` with max-pools whose backward avoids ``select_and_scatter`` (faster on XLA-CPU)."""
    return backward_model(model, "gradient", True)
