"""Weights as pictures: first-layer filters as RGB tiles, deeper filters as grey-scale groups.

Krizhevsky et al. (2012, fig. 3) and Zeiler & Fergus (2014, fig. 2) show the first-layer kernels of
an ImageNet CNN as small colour images (Gabor-like edges and colour blobs); deeper kernels have
as many input channels as the layer below has maps, so they are shown as grey tiles, one group per
output filter ("20 groups of 16 7x7 maps" in the cs231n/ConvNetJS figure).

Conventions
  * Kernels are Flax HWIO: ``(kh, kw, C_in, C_out)``, found through the model interface
    (``model.layer_params``): any model whose layers own a ``kernel`` (bundled, linen, nnx).
  * First-layer tiles are RGB: for a model whose input is BGR (``vgg19_caffe``, Caffe weights) the
    input-channel axis is flipped so a red-sensitive filter looks red.
  * Display normalisation is affine to [0, 1]: per filter (each tile/group uses its own min and
    max) or with ``shared_scale`` one min/max for the whole layer, which keeps relative
    magnitudes comparable (weak filters look grey).
  * Everything returns numpy arrays in [0, 1]; drawing is the caller's (``jaxviz.render.grid``,
    ``filter_grid_image``, ``group_grid_image``).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model

PyTree = Any


def _key_name(key) -> str | None:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return None if key.name == "value" else key.name  # nnx variables hold their array in .value
    return str(getattr(key, "key", key))


def _flat(tree: PyTree) -> dict[str, np.ndarray]:
    """{"sub/kernel": array} of every array leaf of a parameter (sub)tree (dicts, nnx states)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "shape"):
            out["/".join(n for n in map(_key_name, path) if n is not None)] = leaf
    return out


def _kernels(model, params: PyTree, layer: str) -> dict[str, np.ndarray]:
    """{"sub/kernel": (kh, kw, C_in, C_out)} of the 4-D kernels owned by ``layer``."""
    owned = model.layer_params(params, layer)
    if owned is None:
        return {}
    return {p: v for p, v in _flat(owned).items() if p.split("/")[-1] == "kernel" and np.ndim(v) == 4}


def _join(layer: str, sub: str) -> str:
    return f"{layer}/{sub}" if sub else layer


def first_conv(model: ModelLike, params: PyTree | None = None) -> tuple[str, np.ndarray]:
    """(path, kernel): the first convolution whose kernel sees the 3 image channels, found through
    the model interface: the first layer (in forward order) whose parameters hold a 4-D kernel
    with 3 input channels. Its path is ``layer/sub/kernel`` (``features.0/kernel``,
    ``stem/conv/kernel``)."""
    model = as_model(model)
    params = model.resolve_params(params)
    for layer in model.layer_names:
        for sub, kernel in _kernels(model, params, layer).items():
            if np.shape(kernel)[2] == 3:
                return _join(layer, sub), np.asarray(kernel)
    raise JaxvizError(f"model {model.name} has no convolution over the 3 image channels "
                      "(no layer owns a 4-D 'kernel' with 3 input channels)")


def first_conv_path(model: ModelLike, params: PyTree | None = None) -> str:
    """Parameter path of the model's first convolution (``features.0/kernel``, ``stem/conv/kernel``)."""
    return first_conv(model, params)[0]


def get_kernel(model: ModelLike, name: str, params: PyTree | None = None) -> tuple[str, np.ndarray]:
    """The (kh, kw, C_in, C_out) kernel named by a layer name/alias, optionally followed by a
    parameter sub-path inside it (``fire2/expand1x1``, ``features.0/kernel``, ``block/conv1``).

    A layer with several convolutions (a Fire module: squeeze, expand1x1, expand3x3; an MBConv
    block; a residual block) gives the one with the largest spatial kernel (the last of equals);
    name a sub-path to pick another.

    Raises:
      JaxvizError: unknown name, or a layer without a convolution kernel.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    name = str(name)
    # The longest prefix (at a "/" or "." boundary) that names a layer; the rest is a sub-path.
    cuts = [m.start() for m in re.finditer(r"[/.]", name)][::-1]
    layer, rest, error = None, "", None
    for cut in [len(name)] + cuts:
        try:
            layer = model.resolve_layer(name[:cut])
        except JaxvizError as e:
            error = error or e
            continue
        rest = "/".join(p for p in re.split(r"[/.]", name[cut + 1:]) if p)
        break
    if layer is None:
        raise error
    kernels = _kernels(model, params, layer)
    if rest:
        mine = {p: v for p, v in kernels.items() if p == rest or p.startswith(rest + "/")}
    else:
        mine = kernels
    if not mine:
        what = "has no convolution kernel" if not rest else f"has no kernel {rest!r}"
        hint = f"; its kernels: {', '.join(_join(layer, p) for p in kernels)}" if kernels else ""
        raise JaxvizError(f"layer {layer} of {model.name} {what}{hint}")
    best = max(reversed(list(mine)), key=lambda p: np.shape(mine[p])[0] * np.shape(mine[p])[1])
    return _join(layer, best), np.asarray(mine[best])


def normalize_tiles(tiles: np.ndarray, axes: tuple[int, ...], shared_scale: bool = False) -> np.ndarray:
    """Affinely map each slice over ``axes`` to [0, 1] (constant slices -> 0.5); or, with
    ``shared_scale``, the whole array with one min/max."""
    tiles = np.asarray(tiles, np.float32)
    if shared_scale:
        axes = tuple(range(tiles.ndim))
    lo = tiles.min(axis=axes, keepdims=True)
    hi = tiles.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1.0), 0.5).astype(np.float32)


def rgb_filters(kernel: np.ndarray, *, bgr: bool = False, shared_scale: bool = False) -> np.ndarray:
    """(kh, kw, 3, C_out) kernel -> (C_out, kh, kw, 3) RGB tiles in [0, 1].

    Tile c = normalise(kernel[:, :, :, c]) over its own min/max (or the layer's with
    ``shared_scale``); ``bgr`` flips the channel axis first (weights trained on BGR input).
    """
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise JaxvizError(f"expected a (kh, kw, 3, C_out) first-layer kernel, got shape {kernel.shape}")
    if bgr:
        kernel = kernel[:, :, ::-1, :]
    tiles = np.transpose(kernel, (3, 0, 1, 2))
    return normalize_tiles(tiles, (1, 2, 3), shared_scale)


def first_layer_filters(model: ModelLike, *, params: PyTree | None = None, shared_scale: bool = False) -> np.ndarray:
    """The model's first-layer filters as (C_out, kh, kw, 3) RGB tiles in [0, 1] (see ``rgb_filters``);
    flipped to RGB when the model's input is BGR (``model.preprocessing.bgr``)."""
    model = as_model(model)
    _, kernel = first_conv(model, params)
    return rgb_filters(kernel, bgr=model.preprocessing.bgr, shared_scale=shared_scale)


def grey_filters(kernel: np.ndarray, *, groups: int | None = None, per_group: int | None = None,
                 scale: str = "group") -> np.ndarray:
    """(kh, kw, C_in, C_out) kernel -> (G, I, kh, kw) grey tiles in [0, 1]: group g = output filter
    g, tile i = its slice on input channel i, i.e. ``tiles[g, i] ~ kernel[:, :, i, g]``.

    Args:
      groups: show only the first ``groups`` output filters (default all).
      per_group: show only the first ``per_group`` input channels (default all).
      scale: "group" (one min/max per output filter: the default, keeps a filter's input
        channels comparable), "tile" (each tile its own) or "shared" (the whole layer).
    """
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4:
        raise JaxvizError(f"expected a (kh, kw, C_in, C_out) kernel, got shape {kernel.shape}")
    if scale not in ("group", "tile", "shared"):
        raise JaxvizError(f"scale must be 'group', 'tile' or 'shared', got {scale!r}")
    for label, value in (("groups", groups), ("per_group", per_group)):
        if value is not None and value < 1:
            raise JaxvizError(f"{label} must be at least 1, got {value}")
    kernel = kernel[:, :, :per_group, :groups]
    tiles = np.transpose(kernel, (3, 2, 0, 1))  # (G, I, kh, kw)
    axes = {"group": (1, 2, 3), "tile": (2, 3), "shared": (0, 1, 2, 3)}[scale]
    return normalize_tiles(tiles, axes)


def _upscale(tiles: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlarge the two spatial axes after the leading (N) axis."""
    return np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2) if factor > 1 else tiles


def filter_grid_image(tiles: np.ndarray, *, columns: int | None = None, min_tile: int = 24,
                      pad: int = 2) -> np.ndarray:
    """(N, kh, kw[, 3]) tiles -> one (H, W, 3) image, tiles enlarged (nearest) to >= ``min_tile`` px."""
    from jaxviz.render import grid
    factor = max(1, -(-min_tile // tiles.shape[1]))
    return grid(_upscale(np.asarray(tiles), factor), columns=columns, pad=pad)


def group_grid_image(tiles: np.ndarray, *, columns: int | None = None, min_tile: int = 12,
                     pad: int = 1, group_pad: int = 6) -> np.ndarray:
    """(G, I, kh, kw) grey tiles -> one (H, W, 3) image: each group a square-ish block of its I
    tiles, the blocks in a grid separated by ``group_pad`` pixels of white."""
    from jaxviz.render import grid
    g = tiles.shape[0]
    factor = max(1, -(-min_tile // tiles.shape[2]))
    blocks = np.stack([grid(_upscale(t, factor), pad=pad, fill=1.0) for t in tiles])
    # Dark frame around each block so groups read as units.
    framed = np.pad(blocks, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=0.0)
    return grid(framed, columns=columns or int(np.ceil(np.sqrt(g))), pad=group_pad)
