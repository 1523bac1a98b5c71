"""Class and neuron visualisation by gradient ascent on the image, through the one engine.

- Class visualisation (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks"):
  x* = argmax_x s_c(x) − λ‖x‖², s_c the unnormalised class score (logit), with the regularisers of
  Yosinski et al. 2015 ("Understanding neural networks through deep visualization") as in the
  CS231n homework: random jitter (roll), Gaussian blur every k steps, clipping to the valid pixel
  range, optional clipping of small-norm pixels. The step is the per-image L2-normalised gradient
  x <- x + lr · g/‖g‖ (CS231n), so ``lr`` is the L2 length of a step in model-input units.
- Neuron / channel visualisation (Erhan et al. 2009; Olah et al. 2017, "Feature visualization"):
  maximise a channel's mean activation (or one unit) at any named layer; by default in Lucid's
  Fourier-space, decorrelated-colour parameterisation with Adam and jitter.

Images are in model-input space (``model.preprocess``) and stay inside the preprocessing of
[0, 1] (``jaxviz.optimize.valid_range``); ``model.deprocess`` maps results back to RGB [0, 1].
A batch of classes / channels / seeds optimises together (one jitted step, vmap-equivalent).
"""
from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import objectives as obj
from jaxviz import runtime
from jaxviz.errors import JaxvizError
from jaxviz.optimize import (Callback, OptimizeResult, adam, blur, clip_range, clip_small_norm, jitter,
                             normalized_gradient, optimize, valid_range)
from jaxviz.param import fourier, fourier_noise

Array = jax.Array


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 8 or w < 8:
        raise JaxvizError(f"image size must be at least 8x8, got {h}x{w}")
    return int(h), int(w)


def noise_init(model, key: Array, n: int, size: int | tuple[int, int], scale: float = 0.1) -> Array:
    """(N, H, W, 3) small Gaussian noise around the dataset mean (0 in model-input space), in range."""
    h, w = _check_size(size)
    lo, hi = valid_range(model.spec)
    x = scale * jax.random.normal(key, (n, h, w, 3)) * (hi - lo) / 4.0
    return jnp.clip(x, lo, hi)


def class_visualization(model, params: dict | None, classes: int | Sequence[int] | Array, *,
                        init: Array | None = None, size: int | tuple[int, int] | None = None,
                        steps: int = 100, lr: float = 25.0, l2: float = 1e-3, blur_every: int = 10,
                        blur_sigma: float = 0.5, jitter_px: int = 16, clip_fraction: float = 0.0,
                        score: str = "logit", key: Array | None = None,
                        callbacks: Sequence[Callback] = ()) -> OptimizeResult:
    """Maximise s_c(x) − λ‖x‖² for each class (one image per class).

    Args:
      model: a jaxviz ``Model``; params: its parameters (None: ``model.params``).
      classes: class index or (N,) indices.
      init: (N, H, W, 3) starting images in model-input space (e.g. a real image of the class);
        None: small noise (seeded by ``key``) at ``size`` (default: the model's input size).
      steps, lr: iterations and L2 step length (model-input units) of the normalised ascent.
      l2: λ of the L2 penalty; blur_every / blur_sigma: Gaussian blur period (0: never) and σ (px).
      jitter_px: random roll per step; clip_fraction: zero this fraction of smallest-norm pixels
        every ``blur_every`` steps (Yosinski et al.; 0: off).
      score: ``logit`` (default), ``prob`` or ``logprob``.
      key: PRNG key (one, or (N,) per image).
    Returns:
      ``OptimizeResult`` (images (N, H, W, 3) model input; losses (steps, N) = −s_c + λ‖x‖²).
    """
    params = model.params if params is None else params
    if model.spec.num_classes is None:
        raise JaxvizError(f"model {model.name} has no classifier; use neuron visualisation")
    classes = jnp.atleast_1d(jnp.asarray(classes, jnp.int32))
    if int(classes.min()) < 0 or int(classes.max()) >= model.spec.num_classes:
        raise JaxvizError(f"classes must be in 0..{model.spec.num_classes - 1}")
    if steps < 1 or lr <= 0 or l2 < 0 or blur_every < 0 or jitter_px < 0:
        raise JaxvizError("need steps >= 1, lr > 0, l2 >= 0, blur_every >= 0, jitter >= 0")
    n = classes.shape[0]
    key = jax.random.key(0) if key is None else key
    if init is None:
        init = noise_init(model, jax.random.fold_in(key, 12345) if key.ndim == 0 else key[0], n,
                          size or model.spec.input_size)
    init = jnp.asarray(init, jnp.float32)
    if init.ndim != 4 or init.shape[0] != n:
        raise JaxvizError(f"init must be ({n}, H, W, 3) for {n} classes, got {tuple(init.shape)}")
    loss = -obj.class_score(model.apply, params, classes, score) + l2 * obj.l2()
    lo, hi = valid_range(model.spec)
    transforms = [jitter(jitter_px)] if jitter_px else []
    if blur_every:
        transforms.append(blur(blur_sigma, every=blur_every))
        if clip_fraction:
            transforms.append(clip_small_norm(clip_fraction, every=blur_every))
    transforms.append(clip_range(lo, hi))
    return optimize(loss, init, optimizer=normalized_gradient(lr), steps=steps, transforms=tuple(transforms),
                    key=key, callbacks=callbacks, compiler_options=runtime.compiler_options(model))


def channel_visualization(model, params: dict | None, layer: str, channels: int | Sequence[int] | Array, *,
                          size: int | tuple[int, int] | None = None, steps: int = 128, lr: float = 0.05,
                          parameterization: Literal["fourier", "pixels"] = "fourier", jitter_px: int = 8,
                          unit: tuple[int, int] | None = None, init: Array | None = None,
                          key: Array | None = None, callbacks: Sequence[Callback] = ()) -> OptimizeResult:
    """Maximise the mean activation of each channel (or the unit at ``unit`` = (y, x)) of ``layer``.

    Args:
      layer: a layer name or alias; channels: channel index or (N,) indices (one image each).
      size: image size (default: the model's input size); steps, lr: Adam iterations and rate.
      parameterization: ``fourier`` (Lucid: decorrelated colour, 1/f spectrum, sigmoid range) or
        ``pixels`` (Adam on raw pixels, clipped to the valid range, lr in model-input units).
      init: optional (N, H, W, 3) start in model-input space (default: Lucid's small noise).
    Returns:
      ``OptimizeResult`` (images (N, H, W, 3) in model-input space; losses = −activation).
    """
    params = model.params if params is None else params
    layer = model.spec.resolve_layer(layer)
    shape = model.layer_shapes()[layer]
    channels = jnp.atleast_1d(jnp.asarray(channels, jnp.int32))
    if int(channels.min()) < 0 or int(channels.max()) >= shape[-1]:
        raise JaxvizError(f"channel out of range for {layer} (0..{shape[-1] - 1})")
    if steps < 1 or lr <= 0:
        raise JaxvizError("need steps >= 1 and lr > 0")
    if parameterization not in ("fourier", "pixels"):
        raise JaxvizError(f"unknown parameterization {parameterization!r}; use fourier or pixels")
    n = channels.shape[0]
    h, w = _check_size(size or model.spec.input_size)
    key = jax.random.key(0) if key is None else key
    k0 = jax.random.fold_in(key, 777) if key.ndim == 0 else key[0]
    y, x = unit if unit is not None else (None, None)
    loss = -obj.channel(model.apply, params, layer, channels, y, x)
    transforms = [jitter(jitter_px)] if jitter_px else []
    if parameterization == "fourier":
        param = fourier(h, w, to_input=model.preprocess, from_input=model.deprocess)
        if init is None:
            init = param.image(fourier_noise(k0, n, h, w))
        return optimize(loss, init, optimizer=adam(lr), steps=steps, parameterization=param,
                        transforms=tuple(transforms), key=key, callbacks=callbacks,
                        compiler_options=runtime.compiler_options(model))
    lo, hi = valid_range(model.spec)
    init = noise_init(model, k0, n, (h, w)) if init is None else init
    transforms.append(clip_range(lo, hi))
    return optimize(loss, init, optimizer=adam(lr), steps=steps, transforms=tuple(transforms), key=key,
                    callbacks=callbacks, compiler_options=runtime.compiler_options(model))


def to_rgb(model, x: Array) -> np.ndarray:
    """Model-input images -> RGB [0, 1] numpy (clipped: optimised images sit on the range's edge)."""
    return np.clip(np.asarray(model.deprocess(jnp.asarray(x))), 0.0, 1.0)
