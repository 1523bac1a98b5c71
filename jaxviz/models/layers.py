"""Flax building blocks shared by the architectures (NHWC, eval mode only).

Every block carries its geometry (kernel, stride, padding along the path with the largest receptive
field) so that receptive fields can be computed from the architecture rather than measured.
Non-linearities are fields of the network module, so guided backprop / deconvnet can swap in
``custom_vjp`` versions without touching this code.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Activation = Callable[[Array], Array]


def torch_padding(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding as ``torch.nn.Conv2d(padding=p)`` does it."""
    return ((p, p), (p, p))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one spatial axis: (before, after), the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class FrozenBatchNorm(nn.Module):
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


class Fire(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    squeeze: int
    expand1x1: int
    expand3x3: int
    relu: Activation = jax.nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = self.relu(nn.Conv(self.squeeze, (1, 1), name="squeeze")(x))
        e1 = self.relu(nn.Conv(self.expand1x1, (1, 1), name="expand1x1")(s))
        e3 = self.relu(nn.Conv(self.expand3x3, (3, 3), padding=torch_padding(1), name="expand3x3")(s))
        return jnp.concatenate([e1, e3], axis=-1)


class ConvBNAct(nn.Module):
    """Conv (no bias) + frozen BN + ReLU6 with TF "SAME" padding: EfficientNet-Lite's stem/head."""

    features: int
    kernel: int
    stride: int
    relu6: Activation = jax.nn.relu6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pads = [same_padding(s, self.kernel, self.stride) for s in x.shape[1:3]]
        x = nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, padding=pads,
                 use_bias=False, name="conv")(x)
        return self.relu6(FrozenBatchNorm(name="bn")(x))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite).

    expand 1x1 -> depthwise kxk (TF SAME) -> project 1x1, BN after each, ReLU6 after the first
    two; identity skip when the shape is kept.
    """

    in_features: int
    out_features: int
    expand_ratio: int
    kernel: int
    stride: int
    relu6: Activation = jax.nn.relu6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        inputs = x
        hidden = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            x = nn.Conv(hidden, (1, 1), use_bias=False, name="_expand_conv")(x)
            x = self.relu6(FrozenBatchNorm(name="_bn0")(x))
        pads = [same_padding(s, self.kernel, self.stride) for s in x.shape[1:3]]
        x = nn.Conv(hidden, (self.kernel,) * 2, (self.stride,) * 2, padding=pads,
                 feature_group_count=hidden, use_bias=False, name="_depthwise_conv")(x)
        x = self.relu6(FrozenBatchNorm(name="_bn1")(x))
        x = nn.Conv(self.out_features, (1, 1), use_bias=False, name="_project_conv")(x)
        x = FrozenBatchNorm(name="_bn2")(x)
        if self.stride == 1 and self.in_features == self.out_features:
            x = x + inputs
        return x
