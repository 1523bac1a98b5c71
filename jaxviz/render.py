"""Arrays -> displayable images: normalisation, colour maps, overlays and tile grids.

Everything returns float RGB arrays in [0, 1] (H, W, 3); writing files is the caller's job
(``jaxviz.images.save_image``) and matplotlib layout lives in ``jaxviz.gallery``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def normalize(values: np.ndarray, lo: float | None = None, hi: float | None = None,
              eps: float = 1e-12) -> np.ndarray:
    """Affinely map ``values`` to [0, 1] (min/max of the array unless given)."""
    values = np.asarray(values, dtype=np.float32)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    return np.clip((values - lo) / max(hi - lo, eps), 0.0, 1.0)


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB through a matplotlib colour map."""
    from matplotlib import colormaps
    return colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3].astype(np.float32)


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to (H, W) (display only; techniques upsample with jax.image)."""
    from PIL import Image
    if heat.shape == tuple(size):
        return heat.astype(np.float32)
    img = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (any shape; normalised, resized to the image) over an RGB image in [0, 1]."""
    heat = resize_map(normalize(heat), image.shape[:2])
    return np.clip((1 - alpha) * image + alpha * colorize(heat, cmap), 0.0, 1.0)


def grid(tiles: Sequence[np.ndarray] | np.ndarray, columns: int | None = None, pad: int = 1,
         fill: float = 1.0) -> np.ndarray:
    """Tile (N, h, w[, 3]) images into one image, row-major, ``pad`` pixels of ``fill`` between."""
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim == 3:
        tiles = np.repeat(tiles[..., None], 3, axis=-1)
    n, h, w, c = tiles.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    canvas = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, np.float32)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        canvas[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = tile
    return canvas
