"""Gradient attribution: vanilla saliency, input x gradient, SmoothGrad, Integrated Gradients,
guided backprop and the deconvnet.

- Vanilla saliency (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks"):
  map = max over RGB of |d s / d x|, x the PREPROCESSED image (model input space).
- Input x gradient (Shrikumar et al. 2016): x * d s / d x, signed, as Captum's ``InputXGradient``.
- SmoothGrad (Smilkov et al. 2017): the gradient averaged over ``samples`` copies of x with
  Gaussian noise of std ``noise * (max(x) - min(x))`` per image (the paper's relative noise
  level), or of the absolute std ``noise_std`` (Captum's ``NoiseTunnel(stdevs=...)``);
  map = max over RGB of |mean|. The noise of image i comes from its own key (one key is shared
  by all images, or (N,) keys give one each), so an image's result never depends on its batch.
- Integrated Gradients (Sundararajan et al. 2017): (x - x') * mean over the midpoints
  alpha = (k + 1/2)/steps of d s / d x at x' + alpha (x - x'); baseline x' defaults to zeros in
  model-input space (the dataset-mean image for mean/std preprocessing). map = max over RGB of |.|.
- Guided backprop (Springenberg et al. 2015) and deconvnet (Zeiler & Fergus 2014): the gradient
  through ``custom_vjp`` ReLU/ReLU6 (``jaxviz.interface.backward``): ``model.with_backward(rule)``.

Defaults and where they differ from Captum's (a Captum user reproduces Captum's numbers with the
options in brackets):

- Maps (``vanilla_saliency``, ``smoothgrad``, ...) are (N, H, W), max over RGB of |.|; Captum's
  ``Saliency(abs=True)`` keeps the channels, |grad| (N, 3, H, W): use ``gradients`` and take
  ``abs`` [``jnp.abs(gradients(...))``]. Every ``*_gradients`` / ``*_attributions`` function
  returns the signed (N, H, W, 3) array.
- SmoothGrad: 25 samples, relative noise 0.15 (the paper's); Captum's ``NoiseTunnel`` draws 5
  samples of absolute std 1.0 [``samples=5, noise_std=1.0``] and averages the attributions of the
  wrapped method; for ``Saliency`` (abs=True) that is the mean of |grad|, ours |mean grad| (the
  paper's).
- Integrated Gradients: 32 midpoint-rule steps; Captum uses 50 Gauss-Legendre points
  (``method="gausslegendre"``), so values agree to the quadrature error, not bit for bit.
  Baseline zeros in both.
- Guided backprop and deconvnet as Captum's ``GuidedBackprop`` / ``Deconvolution`` (which also
  override every ReLU's backward), including ReLU6 here.

Conventions: ``model`` a ``jaxviz.interface.Model`` (any adapter; a bare ``apply_fn(params, x)``
works for everything but guided backprop and the deconvnet, which need the model's ReLUs);
``x`` (N, H, W, 3) preprocessed NHWC; ``target`` a ``jaxviz.targets.Target`` (class
or neuron; None = the predicted class; an int = that class); ``index`` (N,) overrides the
class/channel per image (a batch of targets). With a class target and no index, the class
predicted for the clean image is used for every noisy / interpolated copy. Images are
independent, so the gradient of the summed score is each image's own gradient: one backward pass
for the batch. Everything is jittable (``model``, ``target`` and the sample/step counts static)
and returns jnp arrays.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.interface.model import per_image_index
from jaxviz.keys import image_keys
from jaxviz.targets import Target, as_target, attribution_doc, check_images, score_fn
from jaxviz.techniques import check

Array = jax.Array


def resolve_index(model: ModelLike, params: dict, x: Array, target: Target,
                  index: Array | None = None) -> Array:
    """(N,) class/channel per image: ``index``, else the target's, else the predicted class."""
    n = x.shape[0]
    if index is not None:
        return per_image_index(index, n)
    if target.index is not None:
        return jnp.full((n,), target.index, jnp.int32)
    if not target.is_class:
        raise JaxvizError("a neuron target needs a channel")
    return jnp.argmax(jax.lax.stop_gradient(as_model(model).apply(params, x)), axis=-1).astype(jnp.int32)


def _grad(model, params: dict, x: Array, target: Target, index: Array | None) -> Array:
    f = score_fn(model, target)
    return jax.grad(lambda x: f(params, x, index).sum())(x)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


@attribution_doc('Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks"')
def gradients(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
              index: Array | None = None) -> Array:
    """Signed d score / d x: (N, H, W, 3) for x (N, H, W, 3)."""
    model = as_model(model)
    params = model.resolve_params(params)
    check_images(x)
    return _grad(model, params, x, as_target(target, index), index)


@attribution_doc('Shrikumar et al. 2016, "Not just a black box" (Captum\\\'s InputXGradient)')
def input_x_gradient(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                     index: Array | None = None) -> Array:
    """Input x gradient (Shrikumar et al. 2016; Captum's ``InputXGradient``): signed (N, H, W, 3)."""
    model = as_model(model)
    return x * gradients(model, params, x, target, index=index)


@attribution_doc('Shrikumar et al. 2016, "Not just a black box"')
def input_x_gradient_map(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                         index: Array | None = None) -> Array:
    """Input x gradient map (N, H, W): max over RGB of |x * d score / d x|."""
    return saliency_map(input_x_gradient(model, params, x, target, index=index))


def saliency_map(grads: Array) -> Array:
    """(N, H, W, C) attributions -> (N, H, W): the max over the last (channel) axis of the
    absolute value. Any leading axes are kept: one image (H, W, C) -> (H, W), as under ``vmap``."""
    return jnp.abs(grads).max(axis=-1)


@attribution_doc('Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks"')
def vanilla_saliency(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                     index: Array | None = None) -> Array:
    """Simonyan et al.'s map: (N, H, W) = max over RGB of |d score / d x|."""
    model = as_model(model)
    return saliency_map(gradients(model, params, x, target, index=index))


def _over_copies(fn: Callable[[Array], Array], copies: Array, chunk: int | None) -> Array:
    """Mean of fn over axis 0 of ``copies`` (S, N, ...), at most ``chunk`` copies vmapped at a time.

    The copies are split into equal batches (``even_batches``): ``lax.map`` runs a count that its
    batch does not divide as a second, smaller batch, which traces and compiles the network's
    gradient a second time (SmoothGrad's 25 samples in 8s: 3 x 8 + 1)."""
    s = copies.shape[0]
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(copies.shape[1:], copies.dtype))
    if s == 0 or math.prod(out.shape) == 0:  # an empty batch: lax.map cannot split zero-size results
        return jnp.zeros(out.shape, out.dtype)
    size, padded = even_batches(s, s if chunk is None else chunk)
    if padded > s:  # repeats of the last copy, left out of the mean
        copies = jnp.concatenate([copies, jnp.repeat(copies[-1:], padded - s, axis=0)])
    return jax.lax.map(fn, copies, batch_size=size)[:s].mean(axis=0)


def even_batches(count: int, chunk: int) -> tuple[int, int]:
    """(batch size <= ``chunk``, padded count) for ``count`` items in equal batches: the largest
    divisor of ``count`` that is at least half of ``chunk`` (no padding), else the fewest batches
    of ``chunk`` evened out (fewer than one padding item per batch)."""
    chunk = max(1, min(int(chunk), count))
    for size in range(chunk, (chunk + 1) // 2 - 1, -1):
        if count % size == 0:
            return size, count
    batches = -(-count // chunk)
    size = -(-count // batches)
    return size, size * batches


def smoothgrad_noise(x: Array, *, key: Array, samples: int = 25, noise: float = 0.15,
                     noise_std: float | None = None) -> Array:
    """The (S, N, H, W, 3) noise SmoothGrad adds: image i's from ``image_keys(key, N)[i]``,
    ``normal(key_i, (S, H, W, 3)) * std_i`` with std_i = ``noise_std``, else ``noise`` x the
    image's value range (max - min)."""
    if noise_std is None:
        std = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    else:
        std = jnp.full(x.shape[:1], noise_std, x.dtype)
    keys = image_keys(key, x.shape[0])
    return jax.vmap(lambda k, s: jax.random.normal(k, (samples,) + x.shape[1:], x.dtype) * s,
                    out_axes=1)(keys, std.astype(x.dtype))


@attribution_doc('Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"')
def smoothgrad_gradients(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                         key: Array, samples: int = 25, noise: float = 0.15, noise_std: float | None = None,
                         index: Array | None = None, chunk: int | None = 8) -> Array:
    """(N, H, W, 3) gradient averaged over ``samples`` noisy copies (signed).

    Args:
      key: one key (the same noise pattern for every image) or (N,) keys, one per image.
      samples: noisy copies per image (static).
      noise: std as a fraction of each image's value range (max - min, model-input units;
        Smilkov et al.'s convention, default 0.15); ignored when ``noise_std`` is given.
      noise_std: absolute std in model-input units (Captum's ``stdevs``).
      chunk: at most this many noisy copies evaluated at once (bounds memory; static); the copies
        run in equal batches (``even_batches``).
    Raises:
      JaxvizError: a sample count outside 1..1000, or a negative / non-finite noise level
        (``jaxviz.techniques``, "smoothgrad"; a traced noise level is the caller's business).
    """
    check("smoothgrad", samples=samples, noise=noise, noise_std=noise_std, chunk=chunk)
    model = as_model(model)
    params = model.resolve_params(params)
    check_images(x)
    target = as_target(target, index)
    index = resolve_index(model, params, x, target, index)
    eps = smoothgrad_noise(x, key=key, samples=samples, noise=noise, noise_std=noise_std)
    return _over_copies(lambda e: _grad(model, params, x + e, target, index), eps, chunk)


@attribution_doc('Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"')
def smoothgrad(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
               key: Array, samples: int = 25, noise: float = 0.15, noise_std: float | None = None,
               index: Array | None = None, chunk: int | None = 8) -> Array:
    """SmoothGrad map (N, H, W): max over RGB of |mean noisy gradient|."""
    return saliency_map(smoothgrad_gradients(model, params, x, target, key=key, samples=samples,
                                             noise=noise, noise_std=noise_std, index=index, chunk=chunk))


@attribution_doc('Sundararajan, Taly & Yan 2017, "Axiomatic attribution for deep networks"')
def integrated_gradients_attributions(model: ModelLike, params: dict, x: Array,
                                      target: Target | int | None = None, *, baseline: Array | None = None,
                                      steps: int = 32, index: Array | None = None,
                                      chunk: int | None = 8) -> Array:
    """Signed IG attributions (N, H, W, 3); they sum to about score(x) - score(baseline).

    ``baseline``: (N, H, W, 3), (H, W, 3) or anything broadcastable (default zeros, model-input
    space); ``steps`` midpoint-rule points (static); at most ``chunk`` points evaluated at once
    (equal batches, ``even_batches``).
    """
    check("integrated", steps=steps, chunk=chunk)
    model = as_model(model)
    params = model.resolve_params(params)
    check_images(x)
    target = as_target(target, index)
    index = resolve_index(model, params, x, target, index)
    if baseline is not None and not _broadcasts_to(np.shape(baseline), tuple(x.shape)):
        raise JaxvizError(f"baseline of shape {tuple(np.shape(baseline))} does not broadcast to the images' "
                          f"{tuple(x.shape)}; give (N, H, W, 3), (H, W, 3) or a scalar")
    baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(baseline, x.shape).astype(x.dtype)
    alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps  # midpoint rule
    mean_grad = _over_copies(lambda a: _grad(model, params, baseline + a * (x - baseline), target, index),
                             alphas, chunk)
    return (x - baseline) * mean_grad


@attribution_doc('Sundararajan, Taly & Yan 2017, "Axiomatic attribution for deep networks"')
def integrated_gradients(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                         baseline: Array | None = None, steps: int = 32, index: Array | None = None,
                         chunk: int | None = 8) -> Array:
    """Integrated Gradients map (N, H, W): max over RGB of |attribution|."""
    return saliency_map(integrated_gradients_attributions(model, params, x, target, baseline=baseline,
                                                          steps=steps, index=index, chunk=chunk))


@attribution_doc('Springenberg et al. 2015, "Striving for simplicity: the all convolutional net"')
def guided_gradients(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                     index: Array | None = None) -> Array:
    """Guided-backprop signal (N, H, W, 3): the gradient through guided ReLU/ReLU6.

    Raises ``JaxvizError`` for a model without ReLUs (e.g. a plain ``apply_fn`` using tanh).
    """
    return gradients(as_model(model).with_backward("guided"), params, x, target, index=index)


@attribution_doc('Springenberg et al. 2015, "Striving for simplicity: the all convolutional net"')
def guided_backprop(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                    index: Array | None = None) -> Array:
    """Guided backprop map (N, H, W): max over RGB of |guided signal|."""
    return saliency_map(guided_gradients(model, params, x, target, index=index))


@attribution_doc('Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks"')
def deconvnet_gradients(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                        index: Array | None = None) -> Array:
    """Deconvnet signal (N, H, W, 3): the backward pass through deconvnet ReLU/ReLU6."""
    return gradients(as_model(model).with_backward("deconv"), params, x, target, index=index)


@attribution_doc('Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks"')
def deconvnet(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
              index: Array | None = None) -> Array:
    """Deconvnet map (N, H, W): max over RGB of |deconvnet signal|."""
    return saliency_map(deconvnet_gradients(model, params, x, target, index=index))
