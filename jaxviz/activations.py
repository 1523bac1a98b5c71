"""Feature-map grids: every channel of a layer for one image, each normalised, strongest marked.

Yosinski et al. (2015, "Understanding neural networks through deep visualization", the live
activation view) and Zeiler & Fergus (2014) show a layer's activation maps as a grid of small
grey images beside the input. Each map is min-max normalised on its own (so weak channels are
visible; the colour bar of one tile says nothing about another), and the channel with the
strongest response (largest maximum activation) is framed.

Conventions: ``x`` is preprocessed NHWC; activations are (N, h, w, C) of any model with named
layers (``jaxviz.interface``); tiles are (N, C, h, w) in [0, 1]; a constant map becomes 0 (it
carries no spatial information).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import Model, ModelLike, as_model
from jaxviz.interface.model import layer_tuple

Array = jax.Array
PyTree = Any


def feature_maps(model: ModelLike, params: PyTree, x: Array, layer: str) -> Array:
    """(N, H, W, 3) preprocessed images -> (N, h, w, C) activations of ``layer`` (any model with
    named layers; the network runs only as far as ``layer``)."""
    model = as_model(model)
    return _feature_maps(model, params, x, model.resolve_layer(layer))


@partial(jax.jit, static_argnames=("model", "layer"))
def _feature_maps(model: Model, params: PyTree, x: Array, layer: str) -> Array:
    return model.activation(params, x, layer)


def check_layers(model: ModelLike, layers: Sequence[str], size: int | tuple[int, int] | None = None, *,
                 spatial: bool = True) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """({given name: canonical name}, {canonical name: shape without batch}) of ``layers`` at
    input ``size`` (default: the model's).

    Raises:
      JaxvizError: an unknown layer (with close names), a layer without a spatial (h, w, C) output
        (with ``spatial``), or one that is empty at this size, naming the smallest size where it
        is not (``model.smallest_input``).
    """
    model = as_model(model)
    names = {layer: model.resolve_layer(layer) for layer in layer_tuple(layers)}
    hw = model.input_hw(size)
    wanted = tuple(dict.fromkeys(names.values()))
    x = jax.ShapeDtypeStruct((1,) + hw + (3,), jnp.float32)
    try:  # the model's own probe of every layer at this size (kept by the model: traced once)
        probed = model.layer_shapes(hw) if model.has_layers else {}
    except JaxvizError:
        probed = {}
    if all(name in probed for name in wanted):
        shapes = {name: probed[name] for name in wanted}
    else:
        try:  # abstract evaluation, stopped after the layers: a head fixed to another size does not matter
            acts = jax.eval_shape(lambda p, x: model.activations(p, x, wanted), model.params, x)
            shapes = {name: tuple(acts[name].shape[1:]) for name in wanted}
        except JaxvizError:
            raise
        except Exception as e:
            raise JaxvizError(f"{model.name} does not run on a {hw[0]}x{hw[1]} input up to layer(s) "
                              f"{', '.join(wanted)} ({e.__class__.__name__})") from None
    for given, name in names.items():
        shape = shapes.get(name)
        label = given if given == name else f"{given} ({name})"
        if shape is None:
            raise JaxvizError(f"layer {label} of {model.name} does not run on a {hw[0]}x{hw[1]} input")
        if spatial and len(shape) != 3:
            raise JaxvizError(f"layer {label} of {model.name} has no spatial output (shape {shape}); "
                              f"choose a convolutional layer")
        if 0 in shape:
            try:
                hint = f"; the smallest input size where it is not is {model.smallest_input(name)} px"
            except JaxvizError:
                hint = ""
            raise JaxvizError(f"layer {label} of {model.name} is empty (shape {shape}) at a {hw[0]}x{hw[1]} "
                              f"input{hint}")
    return names, {name: shapes[name] for name in names.values()}


def check_spatial(model: ModelLike, layer: str, input_size: int | tuple[int, int] | None = None) -> str:
    """The canonical name of ``layer`` if it has a non-empty spatial (h, w, C) output at
    ``input_size``; a clear error otherwise (see ``check_layers``)."""
    names, _ = check_layers(model, [layer], input_size)
    return names[layer]


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
    """(N, h, w, C) -> (N,) index of the channel with the largest max (``by="max"``) or mean
    (``by="mean"``) activation.

    Raises:
      JaxvizError: ``by`` neither "max" nor "mean".
    """
    if by not in ("max", "mean"):
        raise JaxvizError(f"by must be 'max' or 'mean', got {by!r}")
    reduce = jnp.max if by == "max" else jnp.mean
    return jnp.argmax(reduce(acts, axis=(1, 2)), axis=-1)


def maps_grid(tiles: np.ndarray, *, highlight: int | None = None, columns: int | None = None,
              min_tile: int = 16, pad: int = 0, color: tuple[float, float, float] = (1.0, 0.1, 0.1)) -> np.ndarray:
    """(C, h, w) normalised maps of one image -> (H, W, 3) grid; tile ``highlight`` framed in
    ``color`` (the frame is drawn in the padding, so no map pixel is covered)."""
    from jaxviz.render import grid
    tiles = np.asarray(tiles, np.float32)
    factor = max(1, -(-min_tile // tiles.shape[1]))
    tiles = np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2)
    c, h, w = tiles.shape
    if highlight is not None and not -c <= highlight < c:
        raise JaxvizError(f"highlight {highlight} is not one of the {c} tiles")
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
