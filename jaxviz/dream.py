"""DeepDream (Mordvintsev, Olah & Tyka 2015, "Inceptionism"), through the one engine.

Gradient ascent on ½ Σ_i f_i(x)² over the units of one layer — whose gradient w.r.t. the layer
*is* its activation, so every feature is amplified in proportion to how active it already is —
starting from a real image, with
- octaves: the image is processed from the coarsest scale (size / scale^(octaves−1)) to the
  original; after each octave the *detail* added so far is upsampled onto the next scale;
- random jitter (roll) each step;
- normalised steps: x <- x + step · g / mean|g| (the original notebook), and clipping to the valid
  pixel range.
``model`` is a ``jaxviz.interface.Model`` with named layers (any adapter). Images are in
model-input space; ``step`` defaults to 1.5/255 of the valid range (the notebook's 1.5 on 0–255
images). The jitter of image i comes from its own key (one key is shared by every image), so a
batch dreams exactly like its images one by one. Every octave must leave the layer non-empty.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import objectives as obj
from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.keys import image_keys
from jaxviz.optimize import (
    Callback,
    clip_range,
    jitter,
    normalized_gradient,
    optimize,
    require_concrete,
)
from jaxviz.targets import require_finite
from jaxviz.techniques import check

Array = jax.Array

MIN_OCTAVE = 16  # px: the coarsest octave's smaller side


def octave_sizes(h: int, w: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Sizes from coarsest to the original."""
    return [(max(1, round(h / scale ** o)), max(1, round(w / scale ** o))) for o in range(octaves - 1, -1, -1)]


def _check_octaves(model, given: str, layer: str, sizes: list[tuple[int, int]], octaves: int,
                   scale: float) -> None:
    """Refuse octaves at which the layer is empty, naming the smallest image size that works."""
    coarsest = sizes[0]
    shape = model.layer_shapes(coarsest).get(layer) if model.has_layers else None
    if shape is None or math.prod(shape) > 0:
        return
    need = model.smallest_input(layer)
    image = math.ceil(need * scale ** (octaves - 1))
    name = given if given == layer else f"{given} ({layer})"
    raise JaxvizError(f"layer {name} of {model.name} is empty at the coarsest octave ({coarsest[0]}x{coarsest[1]} "
                      f"px); it needs at least {need}x{need} px: use an image of at least {image}x{image} px "
                      f"with {octaves} octaves of scale {scale:g}, or fewer octaves")


def deepdream(model: ModelLike, params: dict | None, x: Array, layer: str, *, octaves: int = 4,
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
      key: one PRNG key (shared by every image) or (N,) per-image keys.
    Returns:
      (N, H, W, 3) dreamed images in model-input space, inside the valid range.
    Raises:
      JaxvizError: bad shapes or settings, NaN or infinite pixels, or an octave at which the
        layer is empty.
    """
    require_concrete("deepdream", params, x, key)
    check("dream", octaves=octaves, octave_scale=octave_scale, steps=steps, step=step, jitter_px=jitter_px)
    model = as_model(model)
    params = model.resolve_params(params)
    given, layer = layer, model.resolve_layer(layer)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise JaxvizError(f"x must be (N, H, W, 3), got {tuple(x.shape)}")
    require_finite("the images x", x)
    n, h, w, c = x.shape
    sizes = octave_sizes(h, w, octaves, octave_scale)
    if min(sizes[0]) < MIN_OCTAVE:
        raise JaxvizError(f"the coarsest octave would be {sizes[0][0]}x{sizes[0][1]} px (< {MIN_OCTAVE}); use fewer "
                          f"octaves, a smaller octave scale or a larger image")
    _check_octaves(model, given, layer, sizes, octaves, octave_scale)
    lo, hi = model.valid_range()
    step = float(1.5 / 255 * np.mean(hi - lo)) if step is None else float(step)
    keys = image_keys(key, n)
    params = model.prepare_params(params)
    # One loss/optimiser/transform set for all octaves (its data are the weights): the engine
    # reuses the traced step, and a second dream on the same model the compiled ones.
    loss = -obj.deepdream(model, params, layer)
    optimizer = normalized_gradient(step, "mean_abs")
    transforms = ((jitter(int(jitter_px)),) if jitter_px else ()) + (
        clip_range(tuple(float(v) for v in lo), tuple(float(v) for v in hi)),)
    images = base = jnp.asarray(np.zeros((n, *sizes[0], c), np.float32), x.dtype)  # no detail yet
    for o, size in enumerate(sizes):
        base, start = _octave_start(x, images, base, lo, hi, size)
        k = jax.vmap(lambda kk: jax.random.fold_in(kk, o))(keys)
        result = optimize(loss, start, optimizer=optimizer, steps=steps, transforms=transforms, key=k,
                          callbacks=callbacks, compiler_options=model.compiler_options)
        images = result.images
    return images


@partial(jax.jit, static_argnums=5)
def _octave_start(x: Array, images: Array, base: Array, lo, hi, size: tuple[int, int]) -> tuple[Array, Array]:
    """The octave's base (``x`` at ``size``) and its start: the base plus the detail added so far
    (the last octave's ``images - base``) upsampled, clipped. One program per octave (eagerly: a
    compile per operation and shape)."""
    n, c = x.shape[0], x.shape[-1]
    new_base = x if x.shape[1:3] == size else jax.image.resize(x, (n, *size, c), "linear")
    detail = images - base
    if detail.shape[1:3] != size:
        detail = jax.image.resize(detail, (n, *size, c), "linear")
    return new_base, jnp.clip(new_base + detail, lo, hi)
