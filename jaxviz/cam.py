"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM.

- CAM (Zhou et al. 2016, "Learning deep features for discriminative localization"): for a
  global-average-pooled classifier, M_c = sum_k w_kc f_k over the last feature maps f.
  SqueezeNet's ``classifier.2`` channels already are the class maps (``weights=None``);
  EfficientNet-Lite0's are sum_k w_kc f_k over ``head`` with the ``classifier`` dense weights.
- Grad-CAM (Selvaraju et al. 2017): alpha_k = spatial mean of d s / d A_k at any named layer;
  map = ReLU(sum_k alpha_k A_k). The gradient w.r.t. the activation comes from splitting the
  network: ``A = apply_fn(p, x, stop=L)``, then the score of ``apply_fn(p, A, start=L)``.
- Grad-CAM++ (Chattopadhyay et al. 2018): per-position weights
  a = g^2 / (2 g^2 + sum_ab A_ab g^3), alpha_k = sum_ij a_ij ReLU(g_ij) (pytorch-grad-cam's form).
- Guided Grad-CAM: guided backprop (jaxviz.saliency) times the upsampled Grad-CAM.

All maps are non-negative (ReLU) and bilinearly upsampled to the input size: (N, H, W). Since
d logit / d A = w / (h w) for a GAP classifier, CAM = Grad-CAM * (h w) at the CAM layer.
``x`` is preprocessed (N, H, W, 3); ``target``/``index`` as in ``jaxviz.saliency``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxviz.saliency import as_target, guided_gradients, resolve_index, saliency_map
from jaxviz.targets import Target, score_fn

Array = jax.Array


def upsample(maps: Array, size: tuple[int, int]) -> Array:
    """(N, h, w) -> (N, H, W) bilinear (half-pixel centres, as cv2/PIL resize)."""
    return jax.image.resize(maps, (maps.shape[0],) + tuple(size), method="bilinear")


def cam_weights(model) -> Array | None:
    """Weights (C, classes) to combine ``spec.cam_layer`` channels, or None when they are class maps."""
    spec, params = model.spec, model.params
    shapes = model.layer_shapes()
    if shapes[spec.cam_layer][-1] == spec.num_classes:
        return None
    head = spec.layer_names[-1]
    return params[head]["kernel"]


def cam(apply_fn: Callable, params: dict, x: Array, *, layer: str, weights: Array | None = None,
        index: Array | None = None) -> Array:
    """CAM (N, H, W): ReLU(sum_k w_kc f_k) of ``layer``'s maps f (N, h, w, C), upsampled.

    Args:
      weights: (C, classes) classifier weights; None when ``layer``'s channels are the class maps.
      index: (N,) classes; None = the predicted class.
    """
    n = x.shape[0]
    acts = apply_fn(params, x, stop=layer)
    if index is None:
        index = jnp.argmax(apply_fn(params, acts, start=layer), axis=-1)
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))
    if weights is None:
        maps = jnp.take_along_axis(acts, index[:, None, None, None], axis=-1)[..., 0]
    else:
        w = jnp.asarray(weights)[:, index].T  # (N, C)
        maps = jnp.einsum("nhwc,nc->nhw", acts, w)
    return upsample(jax.nn.relu(maps), x.shape[1:3])


def layer_gradients(apply_fn: Callable, params: dict, x: Array, target: Target | int | None = None, *,
                    layer: str, index: Array | None = None) -> tuple[Array, Array]:
    """(A, d score / d A) at ``layer``, both (N, h, w, C): one forward to A, one backward from A."""
    target = as_target(target)
    acts = apply_fn(params, x, stop=layer)

    def tail(p, a, start=None, stop=None, capture=()):  # the network from `layer` on
        return apply_fn(p, a, start=layer, stop=stop)

    if target.is_class and target.index is None and index is None:
        index = jnp.argmax(jax.lax.stop_gradient(tail(params, acts)), axis=-1)
    f = score_fn(tail, target)
    return acts, jax.grad(lambda a: f(params, a, index).sum())(acts)


def _combine(acts: Array, weights: Array, size: tuple[int, int]) -> Array:
    return upsample(jax.nn.relu(jnp.einsum("nhwc,nc->nhw", acts, weights)), size)


def grad_cam(apply_fn: Callable, params: dict, x: Array, target: Target | int | None = None, *,
             layer: str, index: Array | None = None) -> Array:
    """Grad-CAM (N, H, W) at ``layer`` (any named spatial layer)."""
    acts, grads = layer_gradients(apply_fn, params, x, target, layer=layer, index=index)
    return _combine(acts, grads.mean(axis=(1, 2)), x.shape[1:3])


def grad_cam_plus_plus(apply_fn: Callable, params: dict, x: Array, target: Target | int | None = None, *,
                       layer: str, index: Array | None = None) -> Array:
    """Grad-CAM++ (N, H, W) at ``layer``."""
    acts, g = layer_gradients(apply_fn, params, x, target, layer=layer, index=index)
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    a = jnp.where(g != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
    weights = (a * jax.nn.relu(g)).sum(axis=(1, 2))
    return _combine(acts, weights, x.shape[1:3])


def guided_grad_cam_attributions(model, params: dict, x: Array, target: Target | int | None = None, *,
                                 layer: str, index: Array | None = None) -> Array:
    """Guided backprop signal (N, H, W, 3) times the Grad-CAM map (N, H, W, 1)."""
    target = as_target(target)
    if index is None and target.is_class and target.index is None:
        index = resolve_index(model.apply, params, x, target)
    gc = grad_cam(model.apply, params, x, target, layer=layer, index=index)
    return guided_gradients(model, params, x, target, index=index) * gc[..., None]


def guided_grad_cam(model, params: dict, x: Array, target: Target | int | None = None, *,
                    layer: str, index: Array | None = None) -> Array:
    """Guided Grad-CAM map (N, H, W): max over RGB of |guided backprop x Grad-CAM|."""
    return saliency_map(guided_grad_cam_attributions(model, params, x, target, layer=layer, index=index))
