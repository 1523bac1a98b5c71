"""Faster backward passes for the bundled networks on CPU (same values, same gradients).

- ``max_pool``: a ``custom_vjp`` max-pool whose backward is built from strided slices and pads
  instead of XLA's ``select_and_scatter``, which is slow on XLA-CPU (measured in
  ``scripts/bench_attribution.py``). The gradient goes to the first maximum of each window in
  row-major order, as select-and-scatter does; for post-ReLU inputs ties only occur between
  zeros, whose ReLU gradient is zero anyway.
- stride-1 convolutions use kernels precomputed once per run when the params carry them
  (``with_stored_kernels(params)``, for iterative image optimisation: style, texture):

  - the input gradient of a convolution is a convolution with the spatially flipped, in/out-swapped
    kernel, which XLA otherwise rebuilds from every kernel on every backward pass (4% of a VGG19
    Gatys step at 256 px);
  - on CPU, deep 3x3 layers run as Winograd F(2x2, 3x3) convolutions (``jaxviz.accel.winograd``)
    forward and backward, with their transformed kernels stored too (VGG19 Gatys step 0.43 -> 0.34 s).

``FastPoolNet`` is ``SequentialNet`` with both; ``jaxviz.accel.accelerate`` swaps it in.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.accel.winograd import winograd_conv, winograd_kernel
from jaxviz.models import layers
from jaxviz.models.kinds import Conv, Kind, MaxPool
from jaxviz.models.layers import Lambda
from jaxviz.models.network import SequentialNet

Array = jax.Array


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


# ---------------------------------------------------------------- convolutions with precomputed kernels

_NHWC = ("NHWC", "HWIO", "NHWC")
# Winograd beats XLA-CPU's convolution only for deep layers: many channels, few pixels (measured on
# VGG19 shapes, see jaxviz.winograd); the transforms dominate above this many pixels per image.
_WINOGRAD_MIN_CHANNELS = 128
_WINOGRAD_MAX_PIXELS = 64 * 64


def _conv(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding[0],) * 2, (padding[1],) * 2),
                                        dimension_numbers=_NHWC)


def transposed_kernel(kernel: Array) -> Array:
    """(kh, kw, cin, cout) HWIO kernel -> (kh, kw, cout, cin), spatially flipped: the kernel of the
    input gradient of a stride-1 convolution."""
    return kernel[::-1, ::-1].swapaxes(2, 3)  # array methods: a jax or a numpy kernel


def _winograd_applies(x: Array, padding: tuple[int, int], stored: dict, key: str) -> bool:
    return key in stored and padding == (1, 1) and x.shape[1] * x.shape[2] <= _WINOGRAD_MAX_PIXELS


def _forward(x, kernel, stored, padding):
    if _winograd_applies(x, padding, stored, "winograd"):
        return winograd_conv(x, stored["winograd"])
    return _conv(x, kernel, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_with_stored_kernels(x: Array, kernel: Array, stored: dict, padding: tuple[int, int]) -> Array:
    """Stride-1 convolution of (N, H, W, cin) ``x`` with an HWIO ``kernel`` and symmetric
    (rows, cols) zero ``padding``, using kernels precomputed from ``kernel`` (``stored_kernels``):

    - ``"transposed"``: ``transposed_kernel(kernel)``, for the input gradient;
    - ``"winograd"`` / ``"transposed_winograd"`` (3x3, padding 1): ``winograd_kernel`` of both,
      for the forward pass / the input gradient of small, deep feature maps.

    Mathematically the value depends on ``kernel`` only (so its derivative with respect to
    ``stored`` is zero); the kernel gradient is the ordinary one (and free when unused).
    """
    return _forward(x, kernel, stored, padding)


def _conv_fwd(x, kernel, stored, padding):
    return _forward(x, kernel, stored, padding), (x, kernel, stored)


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
    x, kernel, stored = res
    d_kernel = jax.vjp(lambda k: _conv(x, k, padding), kernel)[1](g)[0]
    if _winograd_applies(g, padding, stored, "transposed_winograd"):
        d_x = winograd_conv(g, stored["transposed_winograd"])
    elif x.shape[-1] <= 4:
        d_x = _input_gradient_few_channels(g, kernel, padding, x.shape[1:3])
    else:
        back = (kernel.shape[0] - 1 - padding[0], kernel.shape[1] - 1 - padding[1])
        d_x = _conv(g, stored["transposed"] if "transposed" in stored else transposed_kernel(kernel), back)
    return d_x, d_kernel, None  # None: zero cotangent for the stored kernels


conv_with_stored_kernels.defvjp(_conv_fwd, _conv_bwd)


def stored_kernels(kernel: Array, winograd: bool = False) -> dict:
    """The precomputed kernels of ``conv_with_stored_kernels`` for an HWIO ``kernel``; Winograd
    forms only when asked and useful (3x3, at least 128 input and output channels)."""
    stored = {"transposed": transposed_kernel(kernel)}
    if _takes_winograd(kernel, winograd):
        stored["winograd"] = winograd_kernel(kernel)
        stored["transposed_winograd"] = winograd_kernel(stored["transposed"])
    return stored


def with_stored_kernels(params: dict, winograd: bool | None = None) -> dict:
    """``params`` plus ``stored_kernels`` beside every 4-D ``kernel`` (key ``"stored"``), for
    iterative image optimisation: computed once per run instead of in every step. ``winograd``
    defaults to True on CPU. Kernels already stored are kept. Models that do not use them ignore
    them. The last result is kept, so repeated runs on the same params object reuse it."""
    if winograd is None:
        winograd = jax.default_backend() == "cpu"
    cached = _LAST_STORED.get("key")
    if cached is not None and cached[0] is params and cached[1] == bool(winograd):
        return _LAST_STORED["value"]
    kernels = {}

    def find(tree, path):
        if isinstance(tree, dict):
            kernel = tree.get("kernel")
            if kernel is not None and getattr(kernel, "ndim", 0) == 4 and "stored" not in tree:
                kernels[path] = kernel
            for k, v in tree.items():
                find(v, path + (k,))
    find(params, ())
    if not kernels:
        return params
    if any(_takes_winograd(kernel, winograd) or isinstance(kernel, jax.core.Tracer) for kernel in kernels.values()):
        stored = _stored_kernels_of(kernels, bool(winograd))
    else:  # transposes only (SqueezeNet): moved on the host, bit for bit, no program to compile
        stored = {path: {"transposed": _host_transposed(kernel)} for path, kernel in kernels.items()}

    def add(tree, path):
        if not isinstance(tree, dict):
            return tree
        out = {k: add(v, path + (k,)) for k, v in tree.items()}  # leaves shared, not copied
        if path in stored:
            out["stored"] = stored[path]
        return out
    result = add(params, ())
    _LAST_STORED.update(key=(params, bool(winograd)), value=result)
    return result


_LAST_STORED: dict = {}


def _takes_winograd(kernel: Array, winograd: bool) -> bool:
    return bool(winograd) and kernel.shape[:2] == (3, 3) and min(kernel.shape[2:]) >= _WINOGRAD_MIN_CHANNELS


def _host_transposed(kernel: Array) -> Array:
    """``transposed_kernel`` computed with numpy and put where ``kernel`` lives (the default
    device for a numpy kernel: ``device_put``, as ``jnp.asarray`` would compile a program per shape)."""
    flipped = np.ascontiguousarray(transposed_kernel(np.asarray(kernel)))
    return jax.device_put(flipped, getattr(kernel, "sharding", None))


@functools.partial(jax.jit, static_argnums=1)  # one compiled call (eagerly: one compile per op and shape)
def _stored_kernels_of(kernels: dict, winograd: bool) -> dict:
    return {path: stored_kernels(kernel, winograd) for path, kernel in kernels.items()}


class _Conv(layers.QuickParamCheck, nn.Module):
    """``nn.Conv`` with stride 1 and torch padding (same parameters) that uses the precomputed
    kernels when the params carry them (``with_stored_kernels``)."""

    features: int
    kernel: int
    padding: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel, self.kernel, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        padding = (self.padding, self.padding)
        if self.has_variable("params", "stored"):
            y = conv_with_stored_kernels(x, kernel, self.get_variable("params", "stored"), padding)
        else:
            y = _conv(x, kernel, padding)
        return y + bias


def _pool(x: Array, kernel: int, stride: int, ceil_mode: bool) -> Array:
    return max_pool(x, kernel, stride, ceil_mode)  # custom_vjp: non-differentiable args positional


def fast_max_pool(stage: MaxPool, x: Array) -> Array:
    """A ``MaxPool`` stage through :func:`max_pool` (same values, cheap backward)."""
    if stage.padding:  # its backward assumes no leading padding: padded pools (ResNet's) keep XLA's
        return stage.forward(x)
    fn = functools.partial(_pool, kernel=stage.kernel, stride=stage.stride, ceil_mode=stage.ceil_mode)
    return Lambda(fn, name=stage.name)(x)


def fast_conv(stage: Conv, x: Array) -> Array:
    """A stride-1 ``Conv`` stage that uses stored kernels when the params carry them."""
    if stage.stride == 1 and stage.padding <= stage.kernel - 1:
        return _Conv(stage.features, stage.kernel, stage.padding, name=stage.name)(x)
    return stage.forward(x)


# max-pools are left to jaxviz.accel.rewrite (ops.max_pool / relu_max_pool), which also fuses
# the ReLU before them; a custom_vjp pool here would hide that pattern from it
FAST_OVERRIDES: tuple[tuple[type[Kind], object], ...] = ((Conv, fast_conv),)


class FastPoolNet(SequentialNet):
    """``SequentialNet`` whose stride-1 convolutions use precomputed kernels when given them (same
    parameters, same values to float rounding), swapped in by kind class
    (``SequentialNet.overrides``). (Its max-pools are now ``jaxviz.accel.rewrite``'s business;
    :func:`max_pool` stays for direct use.)"""

    overrides: tuple = FAST_OVERRIDES
