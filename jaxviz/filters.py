"""Weights as pictures: first-layer filters as RGB tiles, deeper filters as grey-scale groups.

Krizhevsky et al. (2012, fig. 3) and Zeiler & Fergus (2014, fig. 2) show the first-layer kernels of
an ImageNet CNN as small colour images (Gabor-like edges and colour blobs); deeper kernels have
as many input channels as the layer below has maps, so they are shown as grey tiles, one group per
output filter ("20 groups of 16 7x7 maps" in the cs231n/ConvNetJS figure).

Conventions
  * Kernels are Flax HWIO: ``(kh, kw, C_in, C_out)``.
  * First-layer tiles are RGB: for a model whose input is BGR (``vgg19_caffe``, Caffe weights) the
    input-channel axis is flipped so a red-sensitive filter looks red.
  * Display normalisation is affine to [0, 1]: per filter (each tile/group uses its own min and
    max) or with ``shared_scale`` one min/max for the whole layer, which keeps relative
    magnitudes comparable (weak filters look grey).
  * Everything returns numpy arrays in [0, 1]; drawing is the caller's (``jaxviz.render.grid``,
    ``filter_grid_image``, ``group_grid_image``).
"""
from __future__ import annotations

import numpy as np

from jaxviz.errors import JaxvizError


def _flat(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def kernel_paths(params: dict) -> list[str]:
    """Paths (``layer/sub/kernel``) of every 4-D convolution kernel, in the params' order."""
    return [p for p, v in _flat(params).items() if p.endswith("kernel") and np.ndim(v) == 4]


def first_conv_path(model) -> str:
    """Parameter path of the model's first convolution (``features.0/kernel``, ``stem/conv/kernel``)."""
    flat = _flat(model.params)
    for stage in model.spec.stages:
        paths = [p for p in flat if p.split("/")[0] == stage.name and p.endswith("kernel") and flat[p].ndim == 4]
        if paths:
            return paths[0]
    raise JaxvizError(f"model {model.spec.name} has no convolution")


def get_kernel(model, name: str) -> tuple[str, np.ndarray]:
    """The (kh, kw, C_in, C_out) kernel named by a parameter path or a layer name/alias.

    A layer with several convolutions (a Fire module: squeeze, expand1x1, expand3x3; an MBConv
    block) gives the one with the largest spatial kernel (the last of equals); name a sub-path
    (``features.3/expand1x1``) to pick another.

    Raises:
      JaxvizError: unknown name, or a layer without a convolution kernel.
    """
    flat = _flat(model.params)
    kernels = kernel_paths(model.params)
    for candidate in (name, f"{name}/kernel"):
        if candidate in kernels:
            return candidate, np.asarray(flat[candidate])
    head, _, rest = name.partition("/")
    try:
        layer = model.spec.resolve_layer(head)
    except JaxvizError:
        if rest:
            raise JaxvizError(f"unknown kernel {name!r}; kernels: {', '.join(kernels[:12])}, ...") from None
        raise
    prefix = f"{layer}/{rest}/" if rest else f"{layer}/"
    mine = [p for p in kernels if p.startswith(prefix)]
    if not mine:
        what = "has no convolution kernel" if not rest else f"has no kernel {rest!r}"
        subs = [p for p in kernels if p.startswith(f"{layer}/")]
        hint = f"; its kernels: {', '.join(subs)}" if subs else ""
        raise JaxvizError(f"layer {layer} of {model.spec.name} {what}{hint}")
    best = max(reversed(mine), key=lambda p: flat[p].shape[0] * flat[p].shape[1])
    return best, np.asarray(flat[best])


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


def first_layer_filters(model, *, shared_scale: bool = False) -> np.ndarray:
    """The model's first-layer filters as (C_out, kh, kw, 3) RGB tiles in [0, 1] (see ``rgb_filters``)."""
    path = first_conv_path(model)
    kernel = np.asarray(_flat(model.params)[path])
    if kernel.shape[2] != 3:
        raise JaxvizError(f"first convolution {path} of {model.spec.name} has {kernel.shape[2]} input channels, not 3")
    return rgb_filters(kernel, bgr=model.spec.preprocessing.bgr, shared_scale=shared_scale)


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
