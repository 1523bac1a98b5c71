"""Texture synthesis: non-parametric sampling (Efros & Leung 1999) and Gram matrices (Gatys et al. 2015).

Efros–Leung ("Texture Synthesis by Non-parametric Sampling", ICCV 1999) grows the output in
scan-line order. Each new pixel's *causal* neighbourhood (the ``r`` rows above it, ``2r + 1`` wide,
and the ``r`` pixels to its left) is compared, by a Gaussian-weighted SSD over the pixels already
known, with the same neighbourhood around every pixel of the sample; one of the matches within
``(1 + tolerance)`` of the best is copied, chosen at random. Pixels outside the output are unknown
(masked out), so the first pixel is a random sample pixel and the first row is matched from the
left only. All matching is one pair of mat-vecs over every sample neighbourhood (jnp); the scan is
a ``lax.fori_loop`` over pixels inside one jitted function.

Gram-matrix synthesis (Gatys, Ecker & Bethge, "Texture Synthesis Using Convolutional Neural
Networks", NIPS 2015) starts from white noise and minimises ``Σ_l w_l E_l`` with
``E_l = 1/(4 N_l² M_l²) Σ (G^l − Ĝ^l)²``, ``G^l = F^l F^lᵀ`` over the ``N_l × M_l`` (channels ×
positions) features of VGG19 (``vgg19_caffe``: original weights, Caffe preprocessing), through the
shared image-optimisation engine (``jaxviz.optimize``). The losses live in ``jaxviz.style``. Any
``jaxviz.interface.Model`` with named spatial layers can be the feature network (a user's
flax.linen / flax.nnx CNN too); the layer sets below are VGG19's.

Conventions: images are NHWC / HWC float32 RGB in [0, 1]; explicit ``jax.random`` keys; same key,
same texture.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence, TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.optimize import OptimizeResult, require_concrete

if TYPE_CHECKING:
    from jaxviz.interface import ModelLike

Array = jax.Array

# Gatys et al. 2015, Fig. 2: texture from conv1_1 only, up to conv1_1 ... conv5_1 (pool1..4 in the
# paper's normalised net; conv*_1 is the usual choice with the original weights).
GRAM_LAYER_SETS: tuple[tuple[str, ...], ...] = (
    ("conv1_1",),
    ("conv1_1", "conv2_1"),
    ("conv1_1", "conv2_1", "conv3_1"),
    ("conv1_1", "conv2_1", "conv3_1", "conv4_1"),
    ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"),
)


# ----------------------------------------------------------------------------------------------
# Efros–Leung
# ----------------------------------------------------------------------------------------------

def _causal_count(radius: int) -> int:
    """Pixels in a causal neighbourhood: ``r`` full rows of ``2r + 1`` and ``r`` to the left."""
    return radius * (2 * radius + 1) + radius


def _gaussian_weights(radius: int) -> np.ndarray:
    """(n_causal,) Gaussian weights, sigma = window / 6.4 as in Efros & Leung."""
    k = 2 * radius + 1
    sigma = k / 6.4
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    w = np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2))
    return w.reshape(-1)[:_causal_count(radius)].astype(np.float32)


def sample_neighbourhoods(sample: Array, radius: int) -> tuple[Array, Array]:
    """Causal neighbourhoods of every sample pixel that has ``r`` rows above and ``r`` columns each side.

    Args:
      sample: (h, w, 3) texture in [0, 1].
      radius: neighbourhood radius ``r`` (window ``2r + 1``).
    Returns:
      ``neigh`` (P, n_causal * 3) neighbourhood vectors and ``centre`` (P, 3) centre colours, with
      P = (h - r) * (w - 2r), rows in scan order of the centres.
    """
    h, w, _ = sample.shape
    k = 2 * radius + 1
    # Windows of (r + 1) x (2r + 1) whose last row's middle pixel is the centre.
    rows = jnp.arange(h - radius)[:, None, None, None] + jnp.arange(radius + 1)[None, None, :, None]
    cols = jnp.arange(w - 2 * radius)[None, :, None, None] + jnp.arange(k)[None, None, None, :]
    windows = sample[rows, cols]  # (h-r, w-2r, r+1, k, 3)
    n = _causal_count(radius)
    flat = windows.reshape(-1, (radius + 1) * k, 3)
    neigh = flat[:, :n].reshape(flat.shape[0], n * 3)
    centre = flat[:, n]
    return neigh, centre


@partial(jax.jit, static_argnames=("size", "radius"))
def _efros_leung(sample: Array, key: Array, size: tuple[int, int], radius: int, tolerance: float) -> Array:
    height, width = size
    k = 2 * radius + 1
    n = _causal_count(radius)
    neigh, centre = sample_neighbourhoods(sample, radius)          # (P, 3n), (P, 3)
    neigh_sq = neigh * neigh
    weights = jnp.repeat(jnp.asarray(_gaussian_weights(radius)), 3)  # (3n,) pixel-major, RGB minor
    # Canvas padded by r on the top, left and right; ``known`` marks generated pixels.
    canvas = jnp.zeros((height + radius, width + 2 * radius, 3), sample.dtype)
    known = jnp.zeros((height + radius, width + 2 * radius), sample.dtype)

    def window(a: Array, i: Array, j: Array) -> Array:
        # The (r + 1) x (2r + 1) window whose last row's middle is output pixel (i, j).
        start = (i, j) + (0,) * (a.ndim - 2)
        shape = (radius + 1, k) + a.shape[2:]
        return jax.lax.dynamic_slice(a, start, shape).reshape((radius + 1) * k, -1)[:n]

    def step(t, state):
        canvas, known = state
        i, j = t // width, t % width
        values = window(canvas, i, j).reshape(-1)                   # (3n,)
        mask = jnp.repeat(window(known[..., None], i, j)[:, 0], 3) * weights
        # Masked SSD to every sample neighbourhood, expanded into two mat-vecs:
        # Σ m (a − b)² = Σ m a² − 2 b·(m a) + b²·m.
        dist = jnp.sum(mask * values * values) - 2.0 * neigh @ (mask * values) + neigh_sq @ mask
        dist = dist / jnp.maximum(jnp.sum(mask), 1e-12)
        best = jnp.min(dist)
        ok = dist <= best * (1.0 + tolerance) + 1e-6
        choice = jax.random.categorical(jax.random.fold_in(key, t), jnp.where(ok, 0.0, -jnp.inf))
        canvas = canvas.at[i + radius, j + radius].set(centre[choice])
        known = known.at[i + radius, j + radius].set(1.0)
        return canvas, known

    canvas, _ = jax.lax.fori_loop(0, height * width, step, (canvas, known))
    return canvas[radius:, radius:radius + width]


def efros_leung(sample: Array, size: int | tuple[int, int], *, key: Array, radius: int = 5,
                tolerance: float = 0.1) -> Array:
    """Synthesise a texture by Efros–Leung non-parametric sampling in scan-line order.

    Args:
      sample: (h, w, 3) texture sample in [0, 1].
      size: output size ``S`` or ``(H, W)``.
      key: ``jax.random`` key; the same key gives the same texture.
      radius: neighbourhood radius ``r`` (window ``2r + 1``; Efros & Leung use 5–15 px windows).
      tolerance: copy one of the sample pixels whose distance is within ``(1 + tolerance)`` of
        the best match (the paper's ε = 0.1).
    Returns:
      (H, W, 3) synthesised texture, float32 in [0, 1].
    Raises:
      JaxvizError: if the sample is not (h, w, 3) finite RGB in [0, 1] or is too small for the
        window.
    """
    from jaxviz.techniques import check
    check("efros-leung", radius=radius, tolerance=tolerance)
    sample = jnp.asarray(sample, jnp.float32)
    if sample.ndim != 3 or sample.shape[-1] != 3:
        raise JaxvizError(f"efros_leung: sample must be (h, w, 3), got shape {tuple(sample.shape)}")
    from jaxviz.style import _check_pixels
    _check_pixels(sample, "efros_leung: sample")  # the output copies its pixels: [0, 1] as documented
    if sample.shape[0] <= radius or sample.shape[1] <= 2 * radius:
        raise JaxvizError(f"efros_leung: sample {sample.shape[:2]} too small for radius {radius}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if min(size) < 1:
        raise JaxvizError(f"efros_leung: size must be positive, got {size}")
    return _efros_leung(sample, key, tuple(int(s) for s in size), int(radius), float(tolerance))


# ----------------------------------------------------------------------------------------------
# Gram-matrix synthesis (Gatys et al. 2015), through the shared engine
# ----------------------------------------------------------------------------------------------

def relative_layer_weights(model: ModelLike, params: dict, sample: Array, layers: Sequence[str], *,
                           scale: float = 1e6) -> list[float]:
    """Layer weights ``w_l = scale · C_l² / ‖Ĝ_l‖²`` (Ĝ_l the sample's normalised Gram, C_l its
    channels), so ``w_l E_l = scale · ‖G_l − Ĝ_l‖² / (4 ‖Ĝ_l‖²)``: every layer is matched to the
    same *relative* Gram error.

    Why: Gatys et al. (2015) weight the layers equally in a *normalised* VGG19 (weights rescaled so
    that every filter's mean activation is 1). With the original weights the deep layers' Grams
    are ~1e7x larger than relu1_1's, so equal weights leave the shallow layers unmatched (pixel
    speckle, wrong colours). Dividing by the target's own magnitude is the per-layer part of that
    normalisation; the per-filter part is not emulated.

    Args:
      model, params: the feature network and its parameters (as ``gram_texture`` takes them).
      sample: (h, w, 3) texture sample in [0, 1].
      layers: the layers whose Grams will be matched.
      scale: overall factor (the optimisers used here are scale-invariant after the first step).
    Returns:
      One weight per layer, for ``gram_texture(..., layer_weights=)``.
    Raises:
      JaxvizError: an unknown layer, a layer without a spatial output, or a sample whose Gram is 0
        at a layer (no weight can make its relative error finite).
    """
    from jaxviz.interface import as_model
    from jaxviz.interface.model import layer_tuple
    from jaxviz.style import _check_pixels, check_layers, gram_matrix, layer_features

    model = as_model(model)
    sample = jnp.asarray(sample, jnp.float32)
    if sample.ndim != 3 or sample.shape[-1] != 3:
        raise JaxvizError(f"relative_layer_weights: sample must be (h, w, 3), got {tuple(sample.shape)}")
    _check_pixels(sample, "relative_layer_weights: sample")
    layers = layer_tuple(layers)
    check_layers(model, params, layers, sample.shape[:2], spatial=layers)
    feats = layer_features(model, layers)(params, model.preprocess(sample[None]))
    out = []
    for name, f in zip(layers, feats):
        g = gram_matrix(f, normalize=True)[0]
        norm = float(jnp.sum(g * g))
        if not np.isfinite(norm) or norm <= 0:
            raise JaxvizError(f"relative_layer_weights: the sample's Gram matrix at {name} is zero or not finite")
        out.append(float(scale) * g.shape[-1] ** 2 / norm)
    return out


@partial(jax.jit, static_argnums=1)
def _white_noise(key: Array | None, shape: tuple[int, ...]) -> Array:
    """Uniform [0, 1) noise of ``shape`` from one key (None: key 0): one program, not three."""
    from jaxviz.keys import image_keys
    return jax.random.uniform(image_keys(key, 1)[0], shape)


def gram_texture(model: ModelLike, params: dict, sample: Array, size: int | tuple[int, int], *, layers: Sequence[str],
                 key: Array, layer_weights: Sequence[float] | None = None, steps: int = 100,
                 optimizer: str = "lbfgs", learning_rate: float | None = None,
                 init: Array | None = None, callbacks: Sequence = ()) -> OptimizeResult:
    """Gram-matrix texture synthesis from white noise (Gatys et al. 2015), through ``jaxviz.optimize``.

    Args:
      model, params: the feature network (any ``jaxviz.interface.Model`` with named layers: the
        bundled ``vgg19_caffe`` or a user's linen/nnx CNN) and its parameters.
      sample: (h, w, 3) texture sample in [0, 1], h, w >= 16.
      size: output size ``S`` or ``(H, W)``, at least 16 px a side (may differ from the
        sample's: Grams are per position).
      layers: layers whose Gram matrices are matched, e.g. ``GRAM_LAYER_SETS[-1]`` on VGG19; each
        must have a spatial (h, w, C) output, non-empty at both sizes.
      key: PRNG key of the white-noise start (uniform RGB in [0, 1]); same key, same texture.
      layer_weights: w_l (default 1 / len(layers)).
      steps, optimizer, learning_rate: ``"lbfgs"``, ``"lbfgs-linesearch"`` or ``"adam"`` and its
        step (``jaxviz.style.make_optimizer``).
      init: optional (h, w, 3) start image in [0, 1] instead of white noise, resized (bilinear) to
        ``size``: coarse-to-fine synthesis passes a smaller result here, so that the steps at full
        size refine strokes instead of first removing pixel-scale noise (``key`` is then unused).
    Returns:
      (texture (H, W, 3) in [0, 1] as numpy, the engine's ``OptimizeResult``).
    Raises:
      JaxvizError: a bad sample, size, option or layer.
    """
    require_concrete("gram_texture", params, sample, key)
    from jaxviz.interface import as_model
    from jaxviz.interface.model import layer_tuple
    from jaxviz.optimize import optimize, valid_range_projection
    from jaxviz.style import (_check_pixels, _layer_weights, check_layers, check_options, gatys_data, gatys_loss,
                              gram_targets, make_optimizer)

    model = as_model(model)
    sample = jnp.asarray(sample, jnp.float32)
    if sample.ndim != 3 or sample.shape[-1] != 3 or min(sample.shape[:2]) < 16:
        raise JaxvizError(f"gram_texture: sample must be (h, w, 3) with h, w >= 16, got {tuple(sample.shape)}")
    _check_pixels(sample, "gram_texture: sample")
    size = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 16:
        raise JaxvizError(f"gram_texture: size must be >= 16, got {size}")
    check_options(steps=steps, optimizer=optimizer, learning_rate=learning_rate)
    loss = gatys_loss(model, None, layer_tuple(layers))  # style terms only; weights and targets go in as data
    w = _layer_weights(loss.style_layers, layer_weights)
    params = model.resolve_params(params)  # None: the model's own (checked at both sizes below)
    for hw in dict.fromkeys((size, tuple(sample.shape[:2]))):
        check_layers(model, params, loss.style_layers, hw, spatial=loss.style_layers)
    prepared, options = loss.prepare(params)
    # the targets on the plain params (one pass; jaxviz.style.style_transfer says why)
    one = jax.device_put(np.asarray(sample)[None])  # the batch axis on the host: no program
    targets = gram_targets(loss.features, params, [model.preprocess(one)], options=options)
    if init is None:
        start = _white_noise(key, size + (3,))
    else:
        init = jnp.asarray(init, jnp.float32)
        if init.ndim != 3 or init.shape[-1] != 3 or min(init.shape[:2]) < 1:
            raise JaxvizError(f"gram_texture: init must be (h, w, 3), got {tuple(init.shape)}")
        _check_pixels(init, "gram_texture: init")
        start = jax.image.resize(init, size + (3,), "bilinear")
    x0 = model.preprocess(start[None])
    result = optimize(loss, x0, optimizer=make_optimizer(optimizer, learning_rate), steps=int(steps),
                      project=valid_range_projection(model), callbacks=callbacks,
                      data=gatys_data(prepared, targets, w), compiler_options=options)
    image = np.clip(np.asarray(model.deprocess(result.images))[0], 0.0, 1.0)
    return image, result
