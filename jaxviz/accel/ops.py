"""Convolutions and max-pools with backward passes that XLA-CPU runs fast (same values, same gradients).

``jaxviz.accel.rewrite`` puts these into any model's traced program; each is a ``jax.custom_vjp``
whose forward pass is the original operation (bit for bit) and whose backward pass is built
from operations XLA-CPU compiles well:

- ``conv``: the input gradient is a convolution in canonical layout (NHWC input, HWIO kernel)
  with the flipped, in/out-swapped kernel materialised. JAX's own transpose rule swaps the kernel
  dimensions in the convolution's dimension numbers instead; XLA-CPU turns such a convolution
  into a fast (Eigen) one only at the top level of a program, so inside ``lax.map`` / ``scan``
  bodies (SmoothGrad, Integrated Gradients) it ran a naive loop, ~13x slower (profiled on
  SqueezeNet 1.1, batch 64). For an RGB first layer (few input channels) the input gradient is
  one matmul and a col2im of shifted, dilated adds (any stride), a shape XLA-CPU's
  convolutions run slowly.
- ``max_pool``: the forward pass is a max over strided slices (XLA-CPU's ``reduce_window`` was
  3-4x slower), the backward pass routes the gradient by the window's first maximum (row-major:
  what ``select_and_scatter`` does), recorded in the forward pass as a small integer map, so
  neither the pool's input nor ``select_and_scatter`` is needed.
- ``relu_max_pool``: ``max_pool(relu(t))`` as one operation: the ReLU's output is never stored,
  its mask is read off the pool's output (a selected element is positive iff the window's
  maximum is), and the guided-backprop / deconvnet ReLU rules are applied at the selected
  elements (``rule``).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxviz.interface.backward import positive_part

Array = jax.Array
_NHWC = ("NHWC", "HWIO", "NHWC")


# ---------------------------------------------------------------- helpers

def _pairs(padding) -> tuple[tuple[int, int], ...]:
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _window_sum(contribs: dict, out_hw: tuple[int, int], strides: tuple[int, int],
                padded_hw: tuple[int, int]) -> Array:
    """sum over window offsets (a, b) of ``contribs[a, b]`` (N, oh, ow, C) placed at rows
    s*i + a, columns t*j + b of a (N, *padded_hw, C) array: the adjoint of reading a window
    offset's strided slice. One fused loop of interior-padded adds."""
    (s, t), (oh, ow), (hp, wp) = strides, out_hw, padded_hw
    total = None
    for (a, b), c in contribs.items():
        placed = lax.pad(c, jnp.zeros((), c.dtype),
                         ((0, 0, 0), (a, hp - a - (s * (oh - 1) + 1), s - 1),
                          (b, wp - b - (t * (ow - 1) + 1), t - 1), (0, 0, 0)))
        total = placed if total is None else total + placed
    return total


# ---------------------------------------------------------------- convolution

def _plain_nhwc_conv(lhs_shape, rhs_shape, params: dict) -> bool:
    """A 2-D NHWC/HWIO/NHWC ``conv_general_dilated`` without batch groups or dilation, with
    non-negative padding and a float32 (or default) result: what ``conv`` and ``depthwise_conv``
    both require before their own grouping."""
    if len(lhs_shape) != 4 or len(rhs_shape) != 4:
        return False
    return (params["dimension_numbers"] == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
            and params["batch_group_count"] == 1
            and all(d == 1 for d in params["lhs_dilation"]) and all(d == 1 for d in params["rhs_dilation"])
            and all(lo >= 0 and hi >= 0 for lo, hi in params["padding"])
            and params.get("preferred_element_type") in (None, jnp.float32))


def conv_supported(lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...], params: dict) -> bool:
    """Whether ``conv`` takes this ``conv_general_dilated``: 2-D, dense, NHWC/HWIO/NHWC, no
    dilation, non-negative padding, float32."""
    return _plain_nhwc_conv(lhs_shape, rhs_shape, params) and params["feature_group_count"] == 1


def _bind_conv(x, kernel, params):
    return lax.conv_general_dilated_p.bind(x, kernel, **dict(params))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: Array, kernel: Array, params: tuple) -> Array:
    """``conv_general_dilated`` with ``params`` (the primitive's parameters as sorted items;
    see ``conv_supported``): the same forward values, a canonical-layout input gradient."""
    return _bind_conv(x, kernel, params)


def _conv_fwd(x, kernel, params):
    return _bind_conv(x, kernel, params), (x, kernel)


def _input_gradient_few_channels(g: Array, kernel: Array, strides, padding, size) -> Array:
    """Input gradient as one matmul and kh*kw shifted (dilated, for strides) adds."""
    kh, kw, cin, cout = kernel.shape
    n, oh, ow, _ = g.shape
    cols = (g.reshape(-1, cout) @ kernel.reshape(-1, cout).T).reshape(n, oh, ow, kh, kw, cin)
    hp, wp = size[0] + sum(padding[0]), size[1] + sum(padding[1])
    full = _window_sum({(a, b): cols[:, :, :, a, b] for a in range(kh) for b in range(kw)},
                       (oh, ow), strides, (hp, wp))
    return full[:, padding[0][0]:padding[0][0] + size[0], padding[1][0]:padding[1][0] + size[1]]


def _conv_bwd(params, res, g):
    x, kernel = res
    p = dict(params)
    strides, padding = tuple(p["window_strides"]), _pairs(p["padding"])
    kh, kw, cin, _ = kernel.shape
    size = x.shape[1:3]
    if cin <= 4:
        d_x = _input_gradient_few_channels(g, kernel, strides, padding, size)
    else:
        # transposed convolution: dilate g by the strides, pad, convolve with the flipped,
        # in/out-swapped kernel (materialised: HWIO, the layout XLA-CPU's fast path takes)
        pads = []
        for (lo, hi), k, s, n_in, n_out in zip(padding, (kh, kw), strides, size, g.shape[1:3]):
            before = k - 1 - lo
            pads.append((before, n_in + k - 1 - ((n_out - 1) * s + 1) - before))
        flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
        d_x = lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=strides,
                                       dimension_numbers=_NHWC, precision=p.get("precision"))
    d_kernel = jax.vjp(lambda k: _bind_conv(x, k, params), kernel)[1](g)[0]
    return d_x.astype(x.dtype), d_kernel


conv.defvjp(_conv_fwd, _conv_bwd)


# ---------------------------------------------------------------- depthwise convolution

def depthwise_supported(lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...], params: dict) -> bool:
    """Whether ``depthwise_conv`` takes this ``conv_general_dilated``: a 2-D NHWC/HWIO depthwise
    convolution (one filter per input channel: ``feature_group_count`` = C = the kernel's
    outputs, kernel (kh, kw, 1, C)), no dilation, non-negative padding, float32."""
    if not _plain_nhwc_conv(lhs_shape, rhs_shape, params):
        return False
    channels = lhs_shape[3]
    return (channels > 1 and params["feature_group_count"] == channels
            and rhs_shape[2] == 1 and rhs_shape[3] == channels)


def depthwise_conv(x: Array, kernel: Array, strides: tuple, padding: tuple) -> Array:
    """Depthwise convolution (N, H, W, C) * (kh, kw, 1, C) as kh*kw strided slices times the
    kernel's taps, summed. XLA-CPU runs grouped convolutions channel by channel: on
    EfficientNet-Lite0's layers this form is 5-60x faster forward and 3-18x with gradients, and
    its gradient is plain autodiff (slices transpose to pads). Values equal the convolution's to
    float32 rounding (the taps are summed in another order)."""
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = _pairs(padding)
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    sh, sw = strides
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = None
    for dy in range(kh):
        for dx in range(kw):
            window = lax.slice(xp, (0, dy, dx, 0), (xp.shape[0], dy + (oh - 1) * sh + 1, dx + (ow - 1) * sw + 1,
                                                    xp.shape[3]), (1, sh, sw, 1))
            term = window * kernel[dy, dx, 0]
            out = term if out is None else out + term
    return out


# ---------------------------------------------------------------- max-pools

def pool_supported(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
                   padding: Sequence[tuple[int, int]]) -> bool:
    """Whether ``max_pool`` takes this ``reduce_window_max``: NHWC, spatial windows only,
    non-negative padding, at most 255 window positions."""
    if len(shape) != 4 or window[0] != 1 or window[3] != 1 or strides[0] != 1 or strides[3] != 1:
        return False
    pads = _pairs(padding)
    return (pads[0] == (0, 0) and pads[3] == (0, 0) and all(lo >= 0 and hi >= 0 for lo, hi in pads)
            and window[1] * window[2] <= 255)


def _windows(x: Array, window, strides, padding):
    """(padded input size, output size, [(offset, strided slice of the padded input)])."""
    (kh, kw), (s, t), pads = window, strides, padding
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    hp, wp = xp.shape[1:3]
    oh, ow = (hp - kh) // s + 1, (wp - kw) // t + 1
    views = [((a, b), xp[:, a:a + s * (oh - 1) + 1:s, b:b + t * (ow - 1) + 1:t])
             for a in range(kh) for b in range(kw)]
    return (hp, wp), (oh, ow), views


def _max_and_first(x, window, strides, padding):
    """(window maxima, index of each window's first maximum in row-major order (uint8))."""
    _, _, views = _windows(x, window, strides, padding)
    best, first = views[0][1], jnp.zeros(views[0][1].shape, jnp.uint8)
    for i, (_, v) in enumerate(views[1:], 1):
        better = v > best
        # lax.select, not jnp.where: no nested jit per window position (a SqueezeNet gradient
        # held ~90 of them; its programs lowered ~10% faster without)
        first = lax.select(better, lax.full_like(first, i), first)
        best = jnp.maximum(best, v)
    return best, first


def _route(g: Array, first: Array, shape, window, strides, padding) -> Array:
    """The gradient of the pool's input: each window's g at its first maximum."""
    (kh, kw), pads = window, padding
    hp, wp = shape[1] + sum(pads[0]), shape[2] + sum(pads[1])
    zero = jnp.zeros_like(g)
    contribs = {(a, b): lax.select(first == a * kw + b, g, zero) for a in range(kh) for b in range(kw)}
    full = _window_sum(contribs, g.shape[1:3], strides, (hp, wp))
    return full[:, pads[0][0]:pads[0][0] + shape[1], pads[1][0]:pads[1][0] + shape[2]]


def _pool_args(window, strides, padding):
    return (tuple(window[1:3]), tuple(strides[1:3]), _pairs(padding)[1:3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: Array, window: tuple, strides: tuple, padding: tuple) -> Array:
    """``reduce_window_max`` (window, strides, padding as the primitive takes them, 4-D NHWC;
    ``pool_supported``), padding with -inf."""
    return _max_and_first(x, *_pool_args(window, strides, padding))[0]  # the index is dead code here


def _max_pool_fwd(x, window, strides, padding):
    y, first = _max_and_first(x, *_pool_args(window, strides, padding))
    return y, (first, x.shape)


def _max_pool_bwd(window, strides, padding, res, g):
    first, shape = res
    return (_route(g, first, shape, *_pool_args(window, strides, padding)),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def relu_max_pool(t: Array, window: tuple, strides: tuple, padding: tuple, rule: str = "gradient") -> Array:
    """``max_pool(relu(t))`` with the ReLU backward ``rule`` ("gradient", "guided", "deconv")."""
    return jax.nn.relu(_max_and_first(t, *_pool_args(window, strides, padding))[0])


def _relu_max_pool_fwd(t, window, strides, padding, rule):
    # the first maximum of relu(t) is the first of t where the maximum is > 0; where it is 0 the
    # ReLU stops the gradient, except the deconvnet's, which routes it to the window's first zero
    y, first = _max_and_first(jax.nn.relu(t) if rule == "deconv" else t, *_pool_args(window, strides, padding))
    y = jax.nn.relu(y)
    return y, (first, y, t.shape)


def _relu_max_pool_bwd(window, strides, padding, rule, res, g):
    first, y, shape = res
    if rule != "deconv":  # the selected element passes the ReLU iff the window's maximum is > 0
        g = lax.select(y > 0, g, jnp.zeros_like(g))
    d = _route(g, first, shape, *_pool_args(window, strides, padding))
    if rule != "gradient":  # guided / deconv: only positive signals cross the ReLU
        d = positive_part(d)  # not where(d > 0, ...): 4x slower in this fused loop on XLA-CPU
    return (d,)


relu_max_pool.defvjp(_relu_max_pool_fwd, _relu_max_pool_bwd)
