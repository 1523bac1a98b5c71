"""Image parameterisations for the engine (Lucid's ``param/``): Fourier-space, decorrelated colour.

Olah et al. 2017 ("Feature visualization", Distill): optimising the image's 2-D Fourier
coefficients, scaled by 1/frequency, makes steepest descent favour low frequencies; mixing colour
channels through the square root of the ImageNet colour covariance decorrelates them; a sigmoid
keeps pixels in [0, 1]. ``to_input`` (e.g. ``model.preprocess``) maps the [0, 1] image to model
input, so the images the engine hands to objectives are in model-input space, always in range.

``fourier(...)(init)`` encodes an initial image exactly (up to the sigmoid's open range), so
optimisation may start from a real image as well as from noise (``fourier_noise``).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.keys import image_keys
from jaxviz.optimize import Parameterization, _cached

Array = jax.Array

# Lucid's square root of the ImageNet RGB colour covariance (columns: decorrelated channels).
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]], np.float32)
_COLOR = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """(h, w//2+1) spatial frequency magnitudes of ``jnp.fft.rfft2`` coefficients."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def _identity(x):
    return x


@_cached  # the same object for the same arguments: the engine's compiled step is reused
def fourier(h: int, w: int, *, to_input: Callable[[Array], Array] = _identity,
            from_input: Callable[[Array], Array] = _identity, decorrelate: bool = True,
            decay_power: float = 1.0) -> Parameterization:
    """Fourier-space (+ decorrelated colour, sigmoid) parameterisation of (N, h, w, 3) images.

    Args:
      h, w: image size (static).
      to_input: [0, 1] RGB -> model input (``model.preprocess``).
      from_input: its inverse (``model.deprocess``), used to encode an initial image.
      decorrelate: mix channels through the ImageNet colour covariance square root.
      decay_power: coefficients are scaled by 1 / freq**decay_power.
    Returns:
      a ``Parameterization``; params are (N, h, w//2+1, 3, 2) real (re, im) arrays.
    """
    scale = 1.0 / np.maximum(rfft2d_freqs(h, w), 1.0 / max(h, w)) ** decay_power
    scale = scale * np.sqrt(h * w)  # as Lucid: undo irfft2's 1/(h w) so unit coefficients give unit pixels
    scale = jnp.asarray(scale[None, :, :, None], jnp.float32)
    color = jnp.asarray(_COLOR if decorrelate else np.eye(3, dtype=np.float32))
    color_inv = jnp.asarray(np.linalg.inv(_COLOR) if decorrelate else np.eye(3, dtype=np.float32))

    def image(params: Array) -> Array:
        spectrum = jax.lax.complex(params[..., 0], params[..., 1]) * scale
        t = jnp.fft.irfft2(spectrum, s=(h, w), axes=(1, 2)) / 4.0
        t = t @ color.T
        return to_input(jax.nn.sigmoid(t))

    def encode(x: Array) -> Array:
        rgb = jnp.clip(from_input(x), 1e-4, 1 - 1e-4)
        t = jnp.log(rgb) - jnp.log1p(-rgb)  # logit: inverse of the sigmoid
        t = t @ color_inv.T
        spectrum = jnp.fft.rfft2(t * 4.0, axes=(1, 2)) / scale
        return jnp.stack([spectrum.real, spectrum.imag], axis=-1).astype(jnp.float32)

    # jitted: called outside the engine's step (the start image, the result), each would
    # otherwise run as ~15 one-operation programs, every one lowered again in every process
    return Parameterization(jax.jit(encode), jax.jit(image), "fourier")


def fourier_noise(key: Array | None, n: int, h: int, w: int, sd: float = 0.01) -> Array:
    """Lucid's random start: small Gaussian Fourier coefficients (N, h, w//2+1, 3, 2).

    ``key``: one key, shared by every image (so image i's start does not depend on the batch),
    or (N,) per-image keys (``jaxviz.keys.image_keys``).
    """
    return _fourier_noise(image_keys(key, n), h, w, sd)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fourier_noise(keys: Array, h: int, w: int, sd: float) -> Array:
    return sd * jax.vmap(lambda k: jax.random.normal(k, (h, w // 2 + 1, 3, 2), jnp.float32))(keys)
