"""Maximally activating patches (Zeiler & Fergus 2014, fig. 2; Girshick et al. 2014, fig. 4).

For a (layer, channel), the index of ``jaxviz.scan`` holds the k images and positions with the
strongest activation. The unit at position (y, x) of a layer sees exactly the input box
``spec.receptive_fields(input_size)[layer].box(y, x)`` (computed from every kernel, stride and
padding on the way), so cropping that box shows everything the unit saw — nothing less, nothing
more. Where the box hangs over the image edge (the unit saw zero padding there) the tile is grey.
Deeper layers have larger receptive fields, hence larger patches.

Conventions: images float RGB in [0, 1], NHWC; a patch tile is (S, S, 3) with S the receptive
field size; crops are one vmapped ``dynamic_slice`` (sizes static, positions traced).
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError

if TYPE_CHECKING:
    from jaxviz.models.network import ReceptiveField
    from jaxviz.models.registry import ModelSpec
    from jaxviz.scan import Index

GREY = 0.5


@partial(jax.jit, static_argnames=("size",))
def crop_patches(images: jax.Array, tops: jax.Array, lefts: jax.Array, size: int,
                 fill: float = GREY) -> jax.Array:
    """Crop (size, size) boxes starting at (top, left) — possibly outside — filling with ``fill``.

    Args:
      images: (N, H, W, 3).
      tops, lefts: (N,) int box corners in pixels (may be negative or beyond the image).
      size: tile size (static).
    Returns:
      (N, size, size, 3) tiles; pixels outside the image are ``fill``.
    """
    padded = jnp.pad(images, ((0, 0), (size, size), (size, size), (0, 0)), constant_values=fill)
    h, w = images.shape[1:3]

    def one(img, top, left):
        # Clamp inside the padded frame: a box can lie entirely off the image (huge fields).
        t = jnp.clip(top + size, 0, h + size)
        l = jnp.clip(left + size, 0, w + size)
        return jax.lax.dynamic_slice(img, (t, l, 0), (size, size, img.shape[-1]))

    return jax.vmap(one)(padded, tops, lefts)


def unit_field(spec: ModelSpec, layer: str, channel: int, input_size: int) -> ReceptiveField:
    """The exact ``ReceptiveField`` of channel ``channel`` of ``layer``.

    ``spec.receptive_fields`` gives each layer the field of its largest path. A SqueezeNet fire
    module concatenates a 1x1 expand (channels [0, e1)) and a 3x3 expand: the 1x1 channels see
    only what the squeeze saw, i.e. the previous stage's field.
    """
    from jaxviz.models.network import ReceptiveField  # noqa: F811 (runtime import)
    name = spec.resolve_layer(layer)
    fields = spec.receptive_fields(input_size)
    stages = {s.name: (i, s) for i, s in enumerate(spec.stages)}
    i, stage = stages[name]
    if stage.kind == "fire" and channel < stage.args[1]:
        return fields[spec.stages[i - 1].name] if i > 0 else ReceptiveField(1, 1, 0)
    return fields[name]


def visible_extent(spec: ModelSpec, layer: str, input_size: int) -> int:
    """Input rows/columns [0, extent) that ``layer`` can see at all.

    When a stride does not divide the input (SqueezeNet 1.0's 7x7/2 conv1 at 224 px skips the last
    row and column), the last pixels reach no unit: a box is clipped to this, not to the image.
    """
    from jaxviz.models.registry import layer_shapes
    name = spec.resolve_layer(layer)
    fields, shapes = spec.receptive_fields(input_size), layer_shapes(spec, input_size)
    extent = input_size
    for stage in spec.stages:
        shape = shapes[stage.name]
        if len(shape) != 3:
            break
        extent = min(extent, fields[stage.name].box(shape[0] - 1, shape[1] - 1)[2])
        if stage.name == name:
            break
    return extent


def unit_boxes(spec: ModelSpec, layer: str, ys: np.ndarray, xs: np.ndarray, input_size: int) -> np.ndarray:
    """Unclipped receptive-field boxes (top, left, bottom, right) of units (y, x) of ``layer``."""
    rf = spec.receptive_fields(input_size)[spec.resolve_layer(layer)]
    ys, xs = np.asarray(ys), np.asarray(xs)
    tops, lefts = rf.offset + ys * rf.stride, rf.offset + xs * rf.stride
    return np.stack([tops, lefts, tops + rf.size, lefts + rf.size], axis=-1)


def top_patches(index: Index, layer: str, channels: Sequence[int], *, k: int | None = None,
                spec: ModelSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The patches under the top-k activations of ``channels`` of ``layer``.

    Args:
      index: a ``jaxviz.scan.Index``.
      layer: layer name or alias (must have been scanned).
      channels: channel numbers.
      k: patches per channel (default: all the index holds).
      spec: the model spec (default: looked up from the index's model name).
    Returns:
      ``(patches, values)``: (len(channels), k, S, S, 3) tiles in [0, 1] (S = receptive field
      size) and the (len(channels), k) activations.
    Raises:
      JaxvizError: unknown layer or channel out of range.
    """
    from jaxviz.images import load_image
    if spec is None:
        from jaxviz.models.registry import get_spec
        spec = get_spec(index.meta["model"])
    name = spec.resolve_layer(layer)
    if name not in index.topk:
        raise JaxvizError(f"layer {layer} was not scanned in {index.path}; scanned: {', '.join(index.topk)}")
    t = index.topk[name]
    n_channels, kmax = t.values.shape
    channels = [int(c) for c in channels]
    bad = [c for c in channels if not 0 <= c < n_channels]
    if bad:
        raise JaxvizError(f"channel {bad[0]} out of range: layer {name} has {n_channels} channels (0..{n_channels - 1})")
    k = kmax if k is None else min(int(k), kmax)
    if k < 1:
        raise JaxvizError("k must be at least 1")
    size, fit = index.meta["input_size"], index.meta["fit"]
    rf = spec.receptive_fields(size)[name]
    image_ids = t.image[channels, :k]
    cache = {int(i): load_image(index.source(int(i)), size, fit) for i in np.unique(image_ids)}
    images = np.stack([cache[int(i)] for i in image_ids.ravel()])
    ys, xs = t.y[channels, :k].ravel(), t.x[channels, :k].ravel()
    boxes = unit_boxes(spec, name, ys, xs, size)
    tiles = np.array(crop_patches(jnp.asarray(images), jnp.asarray(boxes[:, 0]), jnp.asarray(boxes[:, 1]), rf.size))
    # Grey out what this unit did not see: the part of the layer's field outside the channel's
    # own field (fire 1x1 channels), and pixels beyond the layer's visible extent.
    extent = visible_extent(spec, name, size)
    offs = np.arange(rf.size)
    for n, channel in enumerate(np.repeat(channels, k)):
        f = unit_field(spec, name, int(channel), size)
        top, left, bottom, right = f.box(int(ys[n]), int(xs[n]))
        rows = boxes[n, 0] + offs
        cols = boxes[n, 1] + offs
        inside_r = (rows >= top) & (rows < min(bottom, extent))
        inside_c = (cols >= left) & (cols < min(right, extent))
        tiles[n][~(inside_r[:, None] & inside_c[None, :])] = GREY
    tiles = tiles.reshape(len(channels), k, rf.size, rf.size, 3)
    return tiles, t.values[channels, :k]


def patch_grid(index: Index, layer: str, channels: Sequence[int], *, k: int | None = None,
               spec: ModelSpec | None = None,
               pad: int = 2) -> np.ndarray:
    """One image: for each channel a square grid of its top-k patches, channels side by side.

    Returns:
      (H, W, 3) float image in [0, 1] (white separators), for ``jaxviz.images.save_image``.
    """
    from jaxviz.render import grid
    tiles, _ = top_patches(index, layer, channels, k=k, spec=spec)
    per_channel = [grid(t, pad=1, fill=1.0) for t in tiles]
    return grid(np.stack(per_channel), columns=min(len(per_channel), 8), pad=pad * 3, fill=1.0)
