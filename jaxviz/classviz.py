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

``model`` is a ``jaxviz.interface.Model`` (any adapter; class visualisation also takes a bare
``apply_fn(params, x) -> logits``). Images are in model-input space (``model.preprocess``) and stay
inside the preprocessing of [0, 1] (``model.valid_range()``); ``model.deprocess`` maps results back
to RGB [0, 1]. A batch of classes / channels / seeds optimises together (one jitted step,
vmap-equivalent). Randomness (noise start, jitter) comes from one key per image
(``jaxviz.keys.image_keys``: one key is shared by every image), so image i of a batch equals the
same image optimised alone. A size at which a layer the objective depends on is empty is refused.
"""
from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import objectives as obj
from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.interface.model import host_indices
from jaxviz.keys import image_keys
from jaxviz.optimize import (
    Callback,
    OptimizeResult,
    adam,
    blur,
    clip_range,
    clip_small_norm,
    jitter,
    normalized_gradient,
    optimize,
    require_concrete,
    valid_range,
)
from jaxviz.param import fourier, fourier_noise
from jaxviz.techniques import check

Array = jax.Array

_INIT_STREAM = 12345  # fold_in constants: the start's randomness apart from the steps' (fold_in(k, step))


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if h < 8 or w < 8:
        raise JaxvizError(f"image size must be at least 8x8, got {h}x{w}")
    return int(h), int(w)


def noise_init(model: ModelLike, key: Array | None, n: int, size: int | tuple[int, int], scale: float = 0.1) -> Array:
    """(N, H, W, 3) small Gaussian noise around 0 in model-input space (the dataset mean for
    mean-subtracted preprocessing), clipped to the valid range. ``key``: one key (shared: every
    image gets the same noise) or (N,) keys."""
    model = as_model(model)
    h, w = _check_size(size)
    lo, hi = valid_range(model)
    keys = image_keys(key, n)
    x = jax.vmap(lambda k: jax.random.normal(k, (h, w, 3)))(keys)
    return jnp.clip(scale * x * (hi - lo) / 4.0, lo, hi)


def _start_keys(key: Array | None, n: int) -> Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, _INIT_STREAM))(image_keys(key, n))


def _hw(model, size, init: Array | None) -> tuple[int, int]:
    if init is not None:
        return _check_size(tuple(init.shape[1:3]))
    return _check_size(model.input_hw(size))


def class_visualization(model: ModelLike, params: dict | None, classes: int | Sequence[int] | Array, *,
                        init: Array | None = None, size: int | tuple[int, int] | None = None,
                        steps: int = 100, lr: float = 25.0, l2: float = 1e-3, blur_every: int = 10,
                        blur_sigma: float = 0.5, jitter_px: int = 16, clip_fraction: float = 0.0,
                        score: str = "logit", key: Array | None = None,
                        callbacks: Sequence[Callback] = ()) -> OptimizeResult:
    """Maximise s_c(x) − λ‖x‖² for each class (one image per class).

    Args:
      model: a ``Model`` or a bare ``apply_fn``; params: its parameters (None: ``model.params``).
      classes: class index or (N,) indices, whole numbers (negative: from the end, as in
        attribution); an empty list gives an empty result.
      init: (N, H, W, 3) starting images in model-input space (e.g. a real image of the class);
        None: small noise (seeded by ``key``) at ``size`` (default: the model's input size).
      steps, lr: iterations and L2 step length (model-input units) of the normalised ascent.
      l2: λ of the L2 penalty; blur_every / blur_sigma: Gaussian blur period (0: never) and σ (px).
      jitter_px: random roll per step; clip_fraction: zero this fraction of smallest-norm pixels
        every ``blur_every`` steps (Yosinski et al.; 0: off).
      score: ``logit`` (default), ``prob`` or ``logprob``.
      key: one PRNG key (shared by every image) or (N,) per-image keys.
    Returns:
      ``OptimizeResult`` (images (N, H, W, 3) model input; losses (steps, N) = −s_c + λ‖x‖²).
    Raises:
      JaxvizError: a class out of range or not a whole number, NaN or infinite ``init``, bad
        settings (a ``clip_fraction`` with ``blur_every=0``: it would never act), or a size at
        which a layer is empty.
    """
    require_concrete("class_visualization", params, classes, init, key)
    check("classviz", steps=steps, lr=lr, l2=l2, blur_every=blur_every, blur_sigma=blur_sigma, jitter_px=jitter_px,
          clip_fraction=clip_fraction, score=score, size=size)
    model = as_model(model)
    params = model.resolve_params(params)
    n = np.size(classes)
    hw = _hw(model, size, init)
    obj.require_nonempty(model, None, hw)
    if init is None:
        init = noise_init(model, _start_keys(key, n), n, hw)
    init = jnp.asarray(init, jnp.float32)
    if init.ndim != 4 or init.shape[0] != n or init.shape[-1] != 3:
        raise JaxvizError(f"init must be ({n}, H, W, 3) for {n} classes, got {tuple(init.shape)}")
    # on the host (no programs): whole numbers in range, negative from the end as in attribution
    classes = host_indices(classes, obj.num_outputs(model, params, init))
    params = model.prepare_params(params)
    loss = -obj.class_score(model, params, classes, score) + l2 * obj.l2()
    lo, hi = (tuple(float(v) for v in a) for a in model.valid_range())  # hashable: a cached transform
    transforms = [jitter(int(jitter_px))] if jitter_px else []
    if blur_every:
        transforms.append(blur(float(blur_sigma), every=int(blur_every)))
        if clip_fraction:
            transforms.append(clip_small_norm(float(clip_fraction), every=int(blur_every)))
    transforms.append(clip_range(lo, hi))
    return optimize(loss, init, optimizer=normalized_gradient(float(lr)), steps=steps,
                    transforms=tuple(transforms), key=key, callbacks=callbacks,
                    compiler_options=model.compiler_options)


def channel_visualization(model: ModelLike, params: dict | None, layer: str, channels: int | Sequence[int] | Array, *,
                          size: int | tuple[int, int] | None = None, steps: int = 128, lr: float = 0.05,
                          parameterization: Literal["fourier", "pixels"] = "fourier", jitter_px: int = 8,
                          unit: tuple[int, int] | None = None, init: Array | None = None,
                          key: Array | None = None, callbacks: Sequence[Callback] = ()) -> OptimizeResult:
    """Maximise the mean activation of each channel (or the unit at ``unit`` = (y, x)) of ``layer``.

    Args:
      model: a ``Model`` with named layers; params: its parameters (None: ``model.params``).
      layer: a layer name or alias; channels: channel index or (N,) indices (one image each;
        negative: from the end).
      size: image size (default: the model's input size); steps, lr: Adam iterations and rate.
      parameterization: ``fourier`` (Lucid: decorrelated colour, 1/f spectrum, sigmoid range) or
        ``pixels`` (Adam on raw pixels, clipped to the valid range, lr in model-input units).
      unit: (y, x) of one unit of the layer's map instead of the channel mean.
      init: optional (N, H, W, 3) start in model-input space (default: Lucid's small noise).
      key: one PRNG key (shared by every image) or (N,) per-image keys.
    Returns:
      ``OptimizeResult`` (images (N, H, W, 3) in model-input space; losses = −activation).
    Raises:
      JaxvizError: unknown layer, channel or unit out of range, NaN or infinite ``init``, bad
        settings, or a size at which the layer is empty.
    """
    require_concrete("channel_visualization", params, channels, init, key)
    check("neuron", steps=steps, lr=lr, parameterization=parameterization, jitter_px=jitter_px, size=size)
    model = as_model(model)
    params = model.resolve_params(params)
    given, layer = layer, model.resolve_layer(layer)
    n = np.size(channels)
    h, w = _hw(model, size, init)
    obj.require_nonempty(model, (given,), (h, w))
    shape = model.layer_shapes((h, w))[layer]
    channels = host_indices(channels, shape[-1], "channel", f"channels of {layer}")  # on the host
    y, x = unit if unit is not None else (None, None)
    if unit is not None and (len(shape) != 3 or not (0 <= y < shape[0] and 0 <= x < shape[1])):
        raise JaxvizError(f"unit {tuple(unit)} outside {layer}'s map of shape {shape}")
    params = model.prepare_params(params)
    loss = -obj.channel(model, params, layer, jax.device_put(channels), y, x)
    transforms = [jitter(int(jitter_px))] if jitter_px else []
    start = _start_keys(key, n)
    if init is not None:
        init = jnp.asarray(init, jnp.float32)
        if init.ndim != 4 or init.shape[0] != n or init.shape[-1] != 3:
            raise JaxvizError(f"init must be ({n}, H, W, 3) for {n} channels, got {tuple(init.shape)}")
    if parameterization == "fourier":
        param = fourier(h, w, to_input=model.preprocess, from_input=model.deprocess)
        if init is None:
            init = param.image(fourier_noise(start, n, h, w))
        return optimize(loss, init, optimizer=adam(float(lr)), steps=steps, parameterization=param,
                        transforms=tuple(transforms), key=key, callbacks=callbacks,
                        compiler_options=model.compiler_options)
    lo, hi = (tuple(float(v) for v in a) for a in model.valid_range())
    init = noise_init(model, start, n, (h, w)) if init is None else init
    transforms.append(clip_range(lo, hi))
    return optimize(loss, init, optimizer=adam(float(lr)), steps=steps, transforms=tuple(transforms), key=key,
                    callbacks=callbacks, compiler_options=model.compiler_options)


def to_rgb(model: ModelLike, x: Array) -> np.ndarray:
    """Model-input images -> RGB [0, 1] numpy (clipped: optimised images sit on the range's edge)."""
    return np.clip(np.asarray(as_model(model).deprocess(jnp.asarray(x))), 0.0, 1.0)
