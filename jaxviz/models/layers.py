"""Flax building blocks and pure functions shared by the layer kinds (NHWC, eval mode only).

The kinds themselves (forward, geometry, incremental rule, cost) live in ``jaxviz.models.kinds``
and in their family's module (``squeezenet.Fire``, ``efficientnet.MBConv``).
"""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# jaxviz's linen layers with the quick parameter check (the bundled networks' convolutions and dense layers)
from jaxviz.interface.linen import Conv, Dense, QuickParamCheck  # noqa: F401

Array = jax.Array
Activation = Callable[[Array], Array]


class Lambda(nn.Module):
    """A parameter-free stage (ReLU, pooling, dropout) as a named module, so that it is a layer
    the model interface can read and replace like any other."""

    fn: Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        return self.fn(x)


def torch_padding(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding as ``torch.nn.Conv2d(padding=p)`` does it."""
    return ((p, p), (p, p))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one spatial axis: (before, after), the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class FrozenBatchNorm(QuickParamCheck, nn.Module):
    """Batch norm with fixed statistics (inference only); statistics live in ``params``.

    Keeping mean/var in ``params`` (not ``batch_stats``) means one variable collection everywhere,
    so every technique can call ``apply_fn(params, x)`` without knowing which models have BN.
    """

    eps: float = 1e-3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        inv = scale * jax.lax.rsqrt(var + self.eps)
        return x * inv + (bias - mean * inv)


def pool_padding(size: int, kernel: int, stride: int, ceil_mode: bool = False,
                 padding: int = 0) -> tuple[int, int]:
    """(before, after) padding of one axis that gives ``torch.nn.MaxPool2d``'s output size.

    With ceil_mode the last window may hang over the edge; torch drops windows that would start
    entirely in the padding.
    """
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    extra = (out - 1) * stride + kernel - (size + 2 * padding)
    return padding, padding + max(extra, 0)


def max_pool(x: Array, kernel: int, stride: int, ceil_mode: bool = False, padding: int = 0) -> Array:
    """``torch.nn.MaxPool2d`` semantics, including ``ceil_mode`` (SqueezeNet uses it); the
    overhanging window is padded with -inf, which reproduces torch."""
    pads = [pool_padding(size, kernel, stride, ceil_mode, padding) for size in x.shape[1:3]]
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1),
        ((0, 0), pads[0], pads[1], (0, 0)))


def adaptive_avg_pool(x: Array, output_size: tuple[int, int]) -> Array:
    """``torch.nn.AdaptiveAvgPool2d``: bins [floor(i*H/o), ceil((i+1)*H/o)) per axis.

    The bins are static (they depend on shapes only), so this stays jittable.
    """
    h, w = x.shape[1:3]
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        return x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[-1]).mean(axis=(2, 4))
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        cols = [x[:, r0:r1, (j * w) // ow: -(-((j + 1) * w) // ow)].mean(axis=(1, 2))
                for j in range(ow)]
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)
