"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM.

- CAM (Zhou et al. 2016, "Learning deep features for discriminative localization"): for a
  global-average-pooled classifier, M_c = sum_k w_kc f_k over the last feature maps f.
  SqueezeNet's ``classifier.2`` channels already are the class maps (``weights=None``);
  EfficientNet-Lite0's are sum_k w_kc f_k over ``head`` with the ``classifier`` dense weights.
- Grad-CAM (Selvaraju et al. 2017): alpha_k = spatial mean of d s / d A_k at any named layer;
  map = ReLU(sum_k alpha_k A_k). The gradient with respect to the activation A is one
  ``jax.grad`` over the array injected at that layer (``model.inject``), for any model.
- Grad-CAM++ (Chattopadhyay et al. 2018): per-position weights
  a = g^2 / (2 g^2 + sum_ab A_ab g^3), alpha_k = sum_ij a_ij ReLU(g_ij) (pytorch-grad-cam's form).
- Guided Grad-CAM: guided backprop (jaxviz.saliency) times the upsampled Grad-CAM.

Maps are non-negative (ReLU; ``relu=False`` keeps the signed sum, as Captum's ``LayerGradCam``
with ``relu_attributions=False``) and bilinearly upsampled to the input size (N, H, W);
``resize="nearest"`` upsamples by nearest neighbour (Captum's guided Grad-CAM uses nearest),
``resize=None`` returns the layer's own resolution (N, h, w). Since d logit / d A = w / (h w) for
a GAP classifier, CAM = Grad-CAM * (h w) at the CAM layer. ``model`` is a
``jaxviz.interface.Model``; ``x`` is preprocessed (N, H, W, 3); ``target``/``index`` as in
``jaxviz.saliency``.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError
from jaxviz.interface import as_model
from jaxviz.saliency import guided_gradients, resolve_index, saliency_map
from jaxviz.targets import Target, as_target, class_scores, neuron_scores

Array = jax.Array
Resize = Literal["bilinear", "nearest"] | None
RESIZES = ("bilinear", "nearest", None)


def upsample(maps: Array, size: tuple[int, int], method: Resize = "bilinear") -> Array:
    """(N, h, w) -> (N, H, W), bilinear (half-pixel centres, as cv2/PIL resize) or nearest;
    ``method=None`` returns ``maps`` unchanged."""
    if method is None:
        return maps
    if method not in RESIZES:
        raise JaxvizError(f"unknown resize {method!r}; use bilinear, nearest or None")
    return jax.image.resize(maps, (maps.shape[0],) + tuple(size), method=method)


def cam_weights(model, params=None, layer: str | None = None) -> Array | None:
    """Weights (C, classes) to combine ``layer``'s channels (default: the model's CAM layer), or
    None when its channels already are the class maps.

    The weights are the last layer's ``kernel``: CAM is defined for a global-average-pooled
    linear classifier. Raises ``JaxvizError`` when the model has no such head.
    """
    model = as_model(model)
    params = model.params if params is None else params
    layer = model.resolve_layer(layer or model.cam_layer or model.feature_layer)
    channels = model.layer_shapes()[layer][-1]
    if channels == model.num_classes:
        return None
    head = model.layer_params(params, model.layer_names[-1])
    kernel = head.get("kernel") if hasattr(head, "get") else None
    if kernel is None or tuple(kernel.shape) != (channels, model.num_classes):
        raise JaxvizError(f"CAM at {layer} needs a global-average-pooled linear classifier on it; "
                          "pass weights=(C, classes) or use Grad-CAM")
    return jnp.asarray(getattr(kernel, "value", kernel))


def cam(model, params: dict, x: Array, *, layer: str | None = None, weights: Array | None = None,
        index: Array | None = None, relu: bool = True, resize: Resize = "bilinear") -> Array:
    """CAM (N, H, W): ReLU(sum_k w_kc f_k) of ``layer``'s maps f (N, h, w, C), upsampled.

    Args:
      layer: the feature layer (default: the model's CAM layer).
      weights: (C, classes) classifier weights; None when ``layer``'s channels are the class maps.
      index: (N,) classes; None = the predicted class.
    """
    model = as_model(model)
    layer = layer or model.cam_layer or model.feature_layer
    n = x.shape[0]
    logits, caps = model.run(params, x, capture=(layer,))
    acts = caps[layer]
    if index is None:
        index = jnp.argmax(logits, axis=-1)
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))
    if weights is None:
        if acts.shape[-1] != model.num_classes:
            raise JaxvizError(f"{layer} has {acts.shape[-1]} channels, not one per class: pass weights=")
        maps = jnp.take_along_axis(acts, index[:, None, None, None], axis=-1)[..., 0]
    else:
        w = jnp.asarray(weights)[:, index].T  # (N, C)
        maps = jnp.einsum("nhwc,nc->nhw", acts, w)
    return upsample(jax.nn.relu(maps) if relu else maps, x.shape[1:3], resize)


def layer_gradients(model, params: dict, x: Array, target: Target | int | None = None, *,
                    layer: str, index: Array | None = None) -> tuple[Array, Array]:
    """(A, d score / d A) at ``layer``, both (N, h, w, C): A read in one pass, the gradient taken
    over the array injected at ``layer`` (the rest of the network runs from there)."""
    model = as_model(model)
    target = as_target(target)
    acts = model.activation(params, x, layer)
    n = x.shape[0]

    def scores(a, idx):
        if target.is_class:
            logits = model.inject(params, x, layer, a)
            if idx is None:
                idx = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
            return class_scores(logits, idx, target.score)
        _, caps = model.run(params, x, capture=(target.layer,), inject={layer: a}, output=False)
        return neuron_scores(caps[target.layer], idx, target.y, target.x)

    if index is None and target.index is not None:
        index = jnp.full((n,), target.index, jnp.int32)
    if index is not None:
        index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))
    return acts, jax.grad(lambda a: scores(a, index).sum())(acts)


def _combine(acts: Array, weights: Array, size: tuple[int, int], relu: bool, resize: Resize) -> Array:
    maps = jnp.einsum("nhwc,nc->nhw", acts, weights)
    return upsample(jax.nn.relu(maps) if relu else maps, size, resize)


def grad_cam(model, params: dict, x: Array, target: Target | int | None = None, *,
             layer: str | None = None, index: Array | None = None, relu: bool = True,
             resize: Resize = "bilinear") -> Array:
    """Grad-CAM (N, H, W) at ``layer`` (any named spatial layer; default the model's feature layer)."""
    model = as_model(model)
    layer = layer or model.feature_layer
    acts, grads = layer_gradients(model, params, x, target, layer=layer, index=index)
    _check_spatial(acts, layer)
    return _combine(acts, grads.mean(axis=(1, 2)), x.shape[1:3], relu, resize)


def grad_cam_plus_plus(model, params: dict, x: Array, target: Target | int | None = None, *,
                       layer: str | None = None, index: Array | None = None, relu: bool = True,
                       resize: Resize = "bilinear") -> Array:
    """Grad-CAM++ (N, H, W) at ``layer``."""
    model = as_model(model)
    layer = layer or model.feature_layer
    acts, g = layer_gradients(model, params, x, target, layer=layer, index=index)
    _check_spatial(acts, layer)
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    a = jnp.where(g != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
    weights = (a * jax.nn.relu(g)).sum(axis=(1, 2))
    return _combine(acts, weights, x.shape[1:3], relu, resize)


def _check_spatial(acts: Array, layer: str) -> None:
    if acts.ndim != 4:
        raise JaxvizError(f"layer {layer} has no spatial map (shape {tuple(acts.shape[1:])}); "
                          "name a convolutional layer")


def guided_grad_cam_attributions(model, params: dict, x: Array, target: Target | int | None = None, *,
                                 layer: str | None = None, index: Array | None = None,
                                 resize: Resize = "bilinear") -> Array:
    """Guided backprop signal (N, H, W, 3) times the Grad-CAM map (N, H, W, 1)."""
    model = as_model(model)
    target = as_target(target)
    if index is None and target.is_class and target.index is None:
        index = resolve_index(model, params, x, target)
    gc = grad_cam(model, params, x, target, layer=layer, index=index, resize=resize or "bilinear")
    return guided_gradients(model, params, x, target, index=index) * gc[..., None]


def guided_grad_cam(model, params: dict, x: Array, target: Target | int | None = None, *,
                    layer: str | None = None, index: Array | None = None,
                    resize: Resize = "bilinear") -> Array:
    """Guided Grad-CAM map (N, H, W): max over RGB of |guided backprop x Grad-CAM|."""
    return saliency_map(guided_grad_cam_attributions(model, params, x, target, layer=layer, index=index,
                                                     resize=resize))
