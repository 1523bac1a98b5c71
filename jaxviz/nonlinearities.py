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

Its stride-1 convolutions also take their input gradient from a pre-transposed kernel when the
params carry one (``with_transposed_kernels(params)``): the input gradient of a convolution is a
convolution with the spatially flipped, in/out-swapped kernel, which XLA otherwise rebuilds from
every kernel on every backward pass (4% of a VGG19 Gatys step at 256 px). Iterative image
optimisation (style, texture) transposes once per run instead of once per step.
"""
from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
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


# ---------------------------------------------------------------- convolution with a stored transposed kernel

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding[0],) * 2, (padding[1],) * 2),
                                        dimension_numbers=_NHWC)


def transposed_kernel(kernel: Array) -> Array:
    """(kh, kw, cin, cout) HWIO kernel -> (kh, kw, cout, cin), spatially flipped: the kernel of the
    input gradient of a stride-1 convolution."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_with_transposed_kernel(x: Array, kernel: Array, kernel_t: Array, padding: tuple[int, int]) -> Array:
    """Stride-1 convolution of (N, H, W, cin) ``x`` with an HWIO ``kernel`` and symmetric
    (rows, cols) zero ``padding``; its input gradient uses ``kernel_t = transposed_kernel(kernel)``.

    The value depends on ``kernel`` only (so the derivative with respect to ``kernel_t`` is zero);
    the kernel gradient is the ordinary one (and free when unused: XLA drops it).
    """
    return _conv(x, kernel, padding)


def _conv_fwd(x, kernel, kernel_t, padding):
    return _conv(x, kernel, padding), (x, kernel, kernel_t)


def _input_gradient_few_channels(g: Array, kernel: Array, padding: tuple[int, int],
                                 size: tuple[int, int]) -> Array:
    """Input gradient as one matmul and kh*kw shifted adds (col2im): for a few input channels
    (an RGB image) the transposed convolution has a few output channels, a shape XLA-CPU's
    convolutions run slowly (VGG19 conv1_1 at 256 px: 8.4 ms vs 1.8 ms this way)."""
    kh, kw, cin, cout = kernel.shape
    n, oh, ow, _ = g.shape
    cols = (g.reshape(-1, cout) @ kernel.reshape(-1, cout).T).reshape(n, oh, ow, kh, kw, cin)
    padded = sum(jnp.pad(cols[:, :, :, i, j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
                 for i in range(kh) for j in range(kw))
    return padded[:, padding[0]:padding[0] + size[0], padding[1]:padding[1] + size[1]]


def _conv_bwd(padding, res, g):
    x, kernel, kernel_t = res
    d_kernel = jax.vjp(lambda k: _conv(x, k, padding), kernel)[1](g)[0]
    if x.shape[-1] <= 4:
        return _input_gradient_few_channels(g, kernel, padding, x.shape[1:3]), d_kernel, None
    back = (kernel.shape[0] - 1 - padding[0], kernel.shape[1] - 1 - padding[1])
    return _conv(g, kernel_t, back), d_kernel, None


conv_with_transposed_kernel.defvjp(_conv_fwd, _conv_bwd)


def with_transposed_kernels(params: dict) -> dict:
    """``params`` plus ``kernel_transposed`` beside every 4-D ``kernel`` (see the module docstring);
    models that do not use them ignore them."""
    def add(tree):
        if not isinstance(tree, dict):
            return tree
        out = {k: add(v) for k, v in tree.items()}
        kernel = tree.get("kernel")
        if kernel is not None and getattr(kernel, "ndim", 0) == 4:
            out["kernel_transposed"] = transposed_kernel(kernel)
        return out
    return add(params)


class _Conv(nn.Module):
    """``nn.Conv`` with stride 1 and torch padding (same parameters) that uses a stored
    ``kernel_transposed`` for its input gradient when the params carry one."""

    features: int
    kernel: int
    padding: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel, self.kernel, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        padding = (self.padding, self.padding)
        if self.has_variable("params", "kernel_transposed"):
            y = conv_with_transposed_kernel(x, kernel, self.get_variable("params", "kernel_transposed"), padding)
        else:
            y = _conv(x, kernel, padding)
        return y + bias


class FastPoolNet(SequentialNet):
    """``SequentialNet`` whose max-pools use :func:`max_pool` and whose stride-1 convolutions use
    a stored transposed kernel when given one (same parameters, same values)."""

    def _run(self, stage: Stage, x: Array) -> Array:
        if stage.kind == "maxpool":
            kernel, stride, ceil_mode = stage.args
            return max_pool(x, kernel, stride, ceil_mode)
        if stage.kind == "conv":
            features, kernel, stride, padding = stage.args
            if stride == 1 and padding <= kernel - 1:
                return _Conv(features, kernel, padding, name=stage.name)(x)
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
