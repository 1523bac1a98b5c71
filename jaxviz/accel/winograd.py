"""Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016, "Fast algorithms for convolutional neural
networks"): a 3x3, stride-1, padding-1 convolution as 16 matrix products over 2x2 output tiles,
2.25x fewer multiplications than the direct convolution.

Every 4x4 input tile d and kernel g are transformed (V = Bᵀ d B, U = G g Gᵀ), multiplied
channel-wise as 16 (tiles x C) @ (C x K) matrix products, and transformed back (Y = Aᵀ M A). The
kernel transform is done once per run (``winograd_kernel``); the input and output transforms are
separable, written as strided slices and adds that XLA fuses. Exact in exact arithmetic; in float32
within about 1e-6 of the direct convolution (relative to the largest output).

Used by ``jaxviz.nonlinearities`` for the deep VGG layers on CPU, where it is faster than XLA's
convolution (VGG19 at 256 px, forward: 32x32x512 layers 10 vs 16 ms, 64x64x256 12 vs 16 ms), and
not for the shallow ones, where the transforms cost more than the products save (128x128x128:
36 vs 17 ms).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# G (4x3) maps a 3-tap kernel row to its 4 transformed taps
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def winograd_kernel(kernel: Array) -> Array:
    """(3, 3, C, K) HWIO kernel -> (16, C, K) transformed kernel ``G g Gᵀ`` (tap a*4+b)."""
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"Winograd F(2x2, 3x3) needs a 3x3 kernel, got {kernel.shape[:2]}")
    u = jnp.einsum("ai,ijck,bj->abck", _G, kernel, _G)
    return u.reshape((16,) + kernel.shape[2:])


def _input_transform(d0, d1, d2, d3):
    """Rows (or columns) of Bᵀ d: Bᵀ = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def winograd_conv(x: Array, kernel_w: Array) -> Array:
    """3x3 convolution, stride 1, zero padding 1, of (N, H, W, C) ``x``: (N, H, W, K).

    Args:
      x: (N, H, W, C) input (any H, W >= 1).
      kernel_w: (16, C, K) from ``winograd_kernel``.
    """
    n, h, w, c = x.shape
    th, tw = -(-h // 2), -(-w // 2)  # 2x2 output tiles; odd sizes get a zero row/column, cropped
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    # rows of every tile at once (one stack of 4), then their columns (one stack of 4): the same
    # sums as 16 separately stacked tiles, which XLA-CPU compiled 2x slower (VGG19 step: 4.6 vs
    # 2.7 s), no slower to run
    # lax slices, not numpy indexing: the same program, traced several times faster (a VGG
    # step traces ~40 of these convolutions, again in every process)
    r = jnp.stack(_input_transform(*_taps(xp, 1, th)))                 # (4, N, th, W+, C)
    v = jnp.stack(_input_transform(*_taps(r, 3, tw)), axis=1)        # (4, 4, N, th, tw, C)
    v = v.reshape(16, n * th * tw, c)
    m = jnp.einsum("tpc,tck->tpk", v, kernel_w).reshape(4, 4, n, th, tw, -1)
    # Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] on rows, then on columns
    m0, m1, m2, m3 = _rows(m)
    rows = (m0 + m1 + m2, m1 - m2 - m3)
    y = jnp.stack([jnp.stack([r0 + r1 + r2, r1 - r2 - r3], axis=3) for r0, r1, r2, r3 in map(_rows, rows)], axis=2)
    y = y.reshape(n, 2 * th, 2 * tw, -1)
    return y if (2 * th, 2 * tw) == (h, w) else jax.lax.slice(y, (0, 0, 0, 0), (n, h, w, y.shape[-1]))


def _taps(a: Array, axis: int, tiles: int) -> list[Array]:
    """The 4 taps of every tile along ``axis``: ``a[k : k + 2 tiles : 2]``, k = 0..3."""
    return [jax.lax.slice_in_dim(a, k, k + 2 * tiles - 1, stride=2, axis=axis) for k in range(4)]


def _rows(a: Array) -> list[Array]:
    """``a[0], ..., a[3]`` along the leading axis."""
    return [jax.lax.index_in_dim(a, i, 0, keepdims=False) for i in range(4)]
