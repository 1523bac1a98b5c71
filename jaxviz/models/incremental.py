"""Box arithmetic shared by the layer kinds' incremental-occlusion rules (Krypton, Nakandala, Kumar &
Papakonstantinou, SIGMOD 2019).

A *change* is ``(a, b, patch)``: the box of static shape ``patch.shape[:2]`` at traced position
``(a, b)`` of a full (H, W, C) activation of one image; everything outside the box equals the clean
activation. A kind's rule maps the change of its input to the change of its output:

- a pointwise op (1x1 conv, activation, BN) maps the patch (``pointwise``);
- a spatial op (``Op``: kernel k, stride s, (before, after) padding per axis) changes at most
  ``out_box(h, k, s)`` = (h + k - 2) // s + 1 output rows, starting at
  ceil((a + before - k + 1) / s) (``out_start``); ``spatial`` slices the input region those rows
  read from the clean *padded* activation, writes the changed box in (``patched_region``) and applies
  the op "valid", so border padding is exact.

Box sizes are static (shapes only), so a rule jits and vmaps over window positions; only positions
are traced. ``conv_valid`` and ``frozen_bn`` apply a layer's parameters the way the flax modules do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]
Change = tuple[Array, Array, Array]  # (row, col, patch (h, w, C))


def conv_out(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    """Output length of a "valid" op over one padded axis."""
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def out_box(h: int, kernel: int, stride: int, full_out: int) -> int:
    """Static size of the output box that an input box of size ``h`` can change."""
    return min(full_out, (h + kernel - 2) // stride + 1)


def out_start(a: Array, size: int, kernel: int, stride: int, pad: int, full_out: int) -> Array:
    """Traced first output row of the box (clamped so that the static-size box fits)."""
    lo = (a + pad - kernel + 1 + stride - 1) // stride  # ceil division, floors for negatives
    return jnp.clip(lo, 0, full_out - size)


@dataclass(frozen=True)
class Op:
    """A spatial op along one path of a layer: kernel, stride, (before, after) padding per axis and
    the pad value (-inf for max-pools). Also the layer's receptive-field geometry."""

    kernel: int
    stride: int
    pads: Pads
    value: float = 0.0

    def pad(self, x: Array) -> Array:
        """(H, W, C) clean activation -> padded."""
        return jnp.pad(x, (self.pads[0], self.pads[1], (0, 0)), constant_values=self.value)

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        return (conv_out(h, self.kernel, self.stride, self.pads[0]),
                conv_out(w, self.kernel, self.stride, self.pads[1]))

    def out_box(self, box: tuple[int, int], full_out: tuple[int, int]) -> tuple[int, int]:
        return (out_box(box[0], self.kernel, self.stride, full_out[0]),
                out_box(box[1], self.kernel, self.stride, full_out[1]))


def patched_region(clean_p: Array, pads: Pads, change: Change, start: tuple[Array, Array],
                   size: tuple[int, int]) -> Array:
    """Region of static ``size`` at ``start`` (padded coordinates) of the padded clean activation
    ``clean_p``, with the change written in (``pads``: the padding ``clean_p`` carries).

    The change is placed by masks and clipped gathers rather than dynamic_update_slice, which would
    clamp (and so misplace) a box that sticks out of the region.
    """
    a, b, patch = change
    region = jax.lax.dynamic_slice(clean_p, (start[0], start[1], 0), size + (clean_p.shape[-1],))
    rows = start[0] + jnp.arange(size[0]) - pads[0][0] - a
    cols = start[1] + jnp.arange(size[1]) - pads[1][0] - b
    h, w = patch.shape[:2]
    mask = ((rows >= 0) & (rows < h))[:, None, None] & ((cols >= 0) & (cols < w))[None, :, None]
    values = jnp.take(jnp.take(patch, jnp.clip(rows, 0, h - 1), axis=0), jnp.clip(cols, 0, w - 1), axis=1)
    return jnp.where(mask, values, region)


def spatial_box(op: Op, change: Change, full_out: tuple[int, int]) -> tuple:
    """(output row, output col, output box (h, w), input region start, input region size) of the
    outputs a change can reach through ``op``."""
    a, b, patch = change
    k, s = op.kernel, op.stride
    h, w = op.out_box(patch.shape[:2], full_out)
    oa = out_start(a, h, k, s, op.pads[0][0], full_out[0])
    ob = out_start(b, w, k, s, op.pads[1][0], full_out[1])
    return oa, ob, (h, w), (oa * s, ob * s), ((h - 1) * s + k, (w - 1) * s + k)


def spatial(op: Op, clean_p: Array, change: Change, full_out: tuple[int, int],
            fn: Callable[[Array], Array]) -> Change:
    """Apply ``fn`` (the op and what follows it pointwise, "valid") to the region the changed
    output box reads; ``clean_p`` is the op's padded clean input."""
    oa, ob, _, start, size = spatial_box(op, change, full_out)
    return oa, ob, fn(patched_region(clean_p, op.pads, change, start, size))


def pointwise(change: Change, fn: Callable[[Array], Array]) -> Change:
    a, b, patch = change
    return a, b, fn(patch)


def conv_valid(x: Array, kernel: Array, bias: Array | None, stride: int, groups: int = 1) -> Array:
    """(H, W, C) "valid" convolution with an HWIO kernel, as flax's ``nn.Conv`` computes it (in
    the promoted dtype: float64 images under ``jax_enable_x64`` with float32 weights)."""
    dtype = jnp.result_type(x, kernel)
    y = jax.lax.conv_general_dilated(x[None].astype(dtype), kernel.astype(dtype), (stride, stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups)[0]
    return y if bias is None else y + bias


def frozen_bn(x: Array, p: dict, eps: float = 1e-3) -> Array:
    """``layers.FrozenBatchNorm`` with its params ``p`` (scale, bias, mean, var)."""
    inv = p["scale"] * jax.lax.rsqrt(p["var"] + eps)
    return x * inv + (p["bias"] - p["mean"] * inv)


def max_pool_valid(x: Array, kernel: int, stride: int) -> Array:
    """(H, W, C) max-pool without padding (the caller pads with -inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (kernel, kernel, 1), (stride, stride, 1), "VALID")
