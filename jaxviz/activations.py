"""Feature-map grids: every channel of a layer for one image, each normalised, strongest marked.

Yosinski et al. (2015, "Understanding neural networks through deep visualization", the live
activation view) and Zeiler & Fergus (2014) show a layer's activation maps as a grid of small
grey images beside the input. Each map is min-max normalised on its own (so weak channels are
visible; the colour bar of one tile says nothing about another), and the channel with the
strongest response (largest maximum activation) is framed.

Conventions: ``x`` is preprocessed NHWC; activations are (N, h, w, C); tiles are (N, C, h, w)
in [0, 1]; a constant map becomes 0 (it carries no spatial information).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError

Array = jax.Array


@partial(jax.jit, static_argnames=("apply_fn", "layer"))
def feature_maps(apply_fn: Callable, params: dict, x: Array, layer: str) -> Array:
    """(N, H, W, 3) preprocessed images -> (N, h, w, C) activations of ``layer``."""
    return apply_fn(params, x, stop=layer)


def check_spatial(spec, layer: str, input_size: int | None = None) -> str:
    """The canonical name of ``layer`` if it has a spatial (h, w, C) output; a clear error otherwise."""
    from jaxviz.models.registry import layer_shapes
    name = spec.resolve_layer(layer)
    shape = layer_shapes(spec, input_size)[name]
    if len(shape) != 3:
        raise JaxvizError(f"layer {name} of {spec.name} has no spatial output (shape {shape}); "
                          f"choose a convolutional layer")
    return name


@jax.jit
def normalize_maps(acts: Array) -> Array:
    """(N, h, w, C) -> (N, C, h, w): each (image, channel) map affinely mapped to [0, 1]."""
    maps = jnp.moveaxis(acts, -1, 1)
    lo = maps.min(axis=(2, 3), keepdims=True)
    hi = maps.max(axis=(2, 3), keepdims=True)
    span = hi - lo
    return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0)


@partial(jax.jit, static_argnames=("by",))
def strongest_channel(acts: Array, by: str = "max") -> Array:
    """(N, h, w, C) -> (N,) index of the channel with the largest max (or mean) activation."""
    reduce = jnp.max if by == "max" else jnp.mean
    return jnp.argmax(reduce(acts, axis=(1, 2)), axis=-1)


def maps_grid(tiles: np.ndarray, *, highlight: int | None = None, columns: int | None = None,
              min_tile: int = 16, pad: int = 0, color=(1.0, 0.1, 0.1)) -> np.ndarray:
    """(C, h, w) normalised maps of one image -> (H, W, 3) grid; tile ``highlight`` framed in
    ``color`` (the frame is drawn in the padding, so no map pixel is covered)."""
    from jaxviz.render import grid
    tiles = np.asarray(tiles, np.float32)
    factor = max(1, -(-min_tile // tiles.shape[1]))
    tiles = np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2)
    c, h, w = tiles.shape
    columns = columns or int(np.ceil(np.sqrt(c)))
    # Two pixels of white around each tile; the highlighted tile's become its frame.
    rgb = np.repeat(tiles[..., None], 3, axis=-1)
    framed = np.pad(rgb, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=1.0)
    if highlight is not None:
        framed[highlight, [0, 1, -2, -1], :, :] = color
        framed[highlight, :, [0, 1, -2, -1], :] = color
    return grid(framed, columns=columns, pad=pad)


def activation_panel(image01: np.ndarray, acts: np.ndarray, *, columns: int | None = None,
                     by: str = "max") -> tuple[np.ndarray, int]:
    """One image (H, W, 3) in [0, 1] and its activations (h, w, C) -> ((H', W', 3) picture of the
    image beside the grid of its normalised maps, strongest channel index)."""
    from jaxviz.render import resize_map
    acts = jnp.asarray(acts)[None]
    best = int(strongest_channel(acts, by)[0])
    grid_img = maps_grid(np.asarray(normalize_maps(acts)[0]), highlight=best, columns=columns)
    gh = grid_img.shape[0]
    scale = gh / image01.shape[0]
    size = (gh, max(1, round(image01.shape[1] * scale)))
    image = np.stack([resize_map(image01[..., c], size) for c in range(3)], axis=-1).clip(0, 1)
    gap = np.ones((gh, 8, 3), np.float32)
    return np.concatenate([image, gap, grid_img], axis=1), best
