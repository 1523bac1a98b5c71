"""DeepDream (Mordvintsev, Olah & Tyka 2015, "Inceptionism"), through the one engine.

Gradient ascent on ½ Σ_i f_i(x)² over the units of one layer — whose gradient w.r.t. the layer
*is* its activation, so every feature is amplified in proportion to how active it already is —
starting from a real image, with
- octaves: the image is processed from the coarsest scale (size / scale^(octaves−1)) to the
  original; after each octave the *detail* added so far is upsampled onto the next scale;
- random jitter (roll) each step;
- normalised steps: x <- x + step · g / mean|g| (the original notebook), and clipping to the valid
  pixel range.
Images are in model-input space; ``step`` defaults to 1.5/255 of the valid range (the notebook's
1.5 on 0–255 images).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxviz import objectives as obj
from jaxviz import runtime
from jaxviz.errors import JaxvizError
from jaxviz.optimize import Callback, clip_range, jitter, normalized_gradient, optimize, valid_range

Array = jax.Array


def octave_sizes(h: int, w: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Sizes from coarsest to the original."""
    return [(max(1, round(h / scale ** o)), max(1, round(w / scale ** o))) for o in range(octaves - 1, -1, -1)]


def deepdream(model, params: dict | None, x: Array, layer: str, *, octaves: int = 4,
              octave_scale: float = 1.4, steps: int = 10, step: float | None = None, jitter_px: int = 32,
              key: Array | None = None, callbacks: Sequence[Callback] = ()) -> Array:
    """Dream on ``layer``.

    Args:
      model: a jaxviz ``Model``; params: its parameters (None: ``model.params``).
      x: (N, H, W, 3) real images in model-input space.
      layer: layer name or alias.
      octaves, octave_scale: number of scales and the ratio between them.
      steps: gradient steps per octave; step: step size in model-input units (default 1.5/255 of
        the mean channel range); jitter_px: random roll per step.
      key: PRNG key.
    Returns:
      (N, H, W, 3) dreamed images in model-input space, inside the valid range.
    """
    params = model.params if params is None else params
    layer = model.spec.resolve_layer(layer)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise JaxvizError(f"x must be (N, H, W, 3), got {tuple(x.shape)}")
    if octaves < 1 or octave_scale < 1.0 or steps < 1 or jitter_px < 0:
        raise JaxvizError("need octaves >= 1, octave_scale >= 1, steps >= 1, jitter >= 0")
    n, h, w, c = x.shape
    sizes = octave_sizes(h, w, octaves, octave_scale)
    if min(sizes[0]) < 16:
        raise JaxvizError(f"the coarsest octave would be {sizes[0][0]}x{sizes[0][1]} px; use fewer octaves "
                          f"or a smaller octave scale")
    lo, hi = valid_range(model.spec)
    step = float(1.5 / 255 * jnp.mean(hi - lo)) if step is None else float(step)
    key = jax.random.key(0) if key is None else key
    # One loss/optimiser/transform set for all octaves: the engine reuses the traced step.
    loss = -obj.deepdream(model.apply, params, layer)
    optimizer = normalized_gradient(step, "mean_abs")
    transforms = ((jitter(jitter_px),) if jitter_px else ()) + (clip_range(lo, hi),)
    resize = lambda a, size: jax.image.resize(a, (n, *size, c), "linear")
    detail = jnp.zeros((n, *sizes[0], c), x.dtype)
    for o, size in enumerate(sizes):
        base = resize(x, size) if size != (h, w) else x
        detail = resize(detail, size) if detail.shape[1:3] != size else detail
        start = jnp.clip(base + detail, lo, hi)
        k = jax.random.fold_in(key, o) if key.ndim == 0 else jax.vmap(lambda kk: jax.random.fold_in(kk, o))(key)
        result = optimize(loss, start, optimizer=optimizer, steps=steps, transforms=transforms, key=k,
                          callbacks=callbacks, compiler_options=runtime.compiler_options(model))
        detail = result.images - base
    return result.images
