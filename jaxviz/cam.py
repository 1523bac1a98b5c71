"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM.

- CAM (Zhou et al. 2016, "Learning deep features for discriminative localization"): for a
  global-average-pooled linear classifier, M_c = sum_k w_kc f_k over the maps f that the pooling
  averages. SqueezeNet's ``classifier.1`` channels already are the class maps (``weights=None``);
  otherwise ``cam_weights`` reads w (C, classes) from the last dense layer.
- Grad-CAM (Selvaraju et al. 2017): alpha_k = spatial mean of d s / d A_k at any named layer;
  map = ReLU(sum_k alpha_k A_k). The gradient with respect to the activation A is one
  ``jax.grad`` over the array injected at that layer (``model.inject``), for any model.
- Grad-CAM++ (Chattopadhyay et al. 2018): per-position weights
  a = g^2 / (2 g^2 + sum_ab A_ab g^3), alpha_k = sum_ij a_ij ReLU(g_ij) (pytorch-grad-cam's form).
- Guided Grad-CAM: guided backprop (jaxviz.saliency) times the upsampled Grad-CAM.

Since d logit / d A = w / (h w) for a GAP classifier, CAM = Grad-CAM * (h w) at the CAM layer.

Defaults and where they differ from the peers (options that reproduce them in brackets):

- ``relu=True`` (the paper's map, and pytorch-grad-cam's). Captum's ``LayerGradCam`` defaults to
  ``relu_attributions=False``, the signed sum [``relu=False``].
- ``resize="bilinear"``: maps are upsampled to the input size (N, H, W) with half-pixel centres,
  as pytorch-grad-cam's ``cv2.resize``; pytorch-grad-cam then min-max normalises each map, we do
  not (only the display does). Captum's ``LayerGradCam`` returns the layer's own resolution
  (N, h, w) [``resize=None``], and ``LayerAttribution.interpolate`` defaults to nearest
  [``resize="nearest"``].
- Guided Grad-CAM multiplies guided backprop by the ReLU'd Grad-CAM upsampled bilinearly;
  Captum's ``GuidedGradCam`` upsamples by nearest neighbour [``resize="nearest"``].
- CAM uses the ReLU'd map as in Zhou et al.'s figures [``relu=False`` for the raw class map].

``model`` is a ``jaxviz.interface.Model`` with named layers (a plain ``apply_fn`` has none: the
CAM family says so); ``x`` is preprocessed (N, H, W, 3); ``target``/``index`` as in
``jaxviz.saliency``. Every function is jittable with ``model``, ``target`` and ``layer`` static.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, PyTree, as_model
from jaxviz.interface.model import class_index, per_image_index, take_class
from jaxviz.saliency import guided_gradients, resolve_index, saliency_map
from jaxviz.targets import (Target, as_target, attribution_doc, check_images, check_target_index, class_scores_of,
                            neuron_scores)
from jaxviz.techniques import check

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


def _kernel(node):
    """The 2-D ``kernel`` of a dense layer's parameters (linen dict or nnx State), else None."""
    try:
        kernel = node["kernel"]
    except (KeyError, TypeError, IndexError):
        return None
    get_value = getattr(kernel, "get_value", None)  # an nnx Variable (``.value`` is deprecated)
    kernel = get_value() if callable(get_value) else kernel
    return kernel if getattr(kernel, "ndim", None) == 2 else None


def cam_weights(model: ModelLike, params: PyTree | None = None, layer: str | None = None) -> Array | None:
    """Weights (C, classes) to combine ``layer``'s channels (default: the model's CAM layer), or
    None when its channels already are the class maps.

    The weights are the ``kernel`` of the last dense layer after ``layer`` (a (C, classes)
    matrix): CAM is defined for a global-average-pooled linear classifier, and whether the
    network between ``layer`` and that kernel is only a global average pool is the caller's
    knowledge (``tests/test_attribution_any_model.py`` checks CAM == Grad-CAM * h w on one).

    Raises:
      JaxvizError: a model without classes or without a (C, classes) dense kernel after ``layer``.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    layer = model.resolve_layer(_layer(model, layer, model.cam_layer))
    classes = model.num_classes
    if classes is None:
        raise JaxvizError(f"CAM explains a class, and {model.name} has no classifier output")
    shape = model.layer_shapes()[layer]
    channels = shape[-1]
    if len(shape) == 3 and channels == classes:
        return None
    names = list(model.layer_names)
    for name in reversed(names[names.index(layer) + 1:]):
        kernel = _kernel(model.layer_params(params, name))
        if kernel is not None:
            if tuple(kernel.shape) != (channels, classes):
                break
            return jnp.asarray(kernel)
    raise JaxvizError(f"CAM at {layer} needs a global-average-pooled linear classifier on its {channels} "
                      f"channels (a dense kernel of shape ({channels}, {classes})); pass weights=(C, classes) "
                      "or use Grad-CAM")


@attribution_doc('Zhou et al. 2016, "Learning deep features for discriminative localization"')
def cam(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *, layer: str | None = None,
        weights: Array | None = None, index: Array | None = None, relu: bool = True,
        resize: Resize = "bilinear") -> Array:
    """CAM (N, H, W): ReLU(sum_k w_kc f_k) of ``layer``'s maps f (N, h, w, C), upsampled.

    Args:
      target: a class target (default: the predicted class); CAM explains classes only.
      layer: the feature layer (default: the model's CAM layer, else its feature layer).
      weights: (C, classes) classifier weights (``cam_weights``); None when ``layer``'s
        channels are the class maps.
      index: (N,) classes, overriding the target's.
      relu: False keeps the signed class map.
      resize: "bilinear" | "nearest" | None (the layer's resolution (N, h, w)).
    """
    check("cam", relu=relu, resize=resize)
    model = as_model(model)
    params = model.resolve_params(params)
    check_images(x)
    target = as_target(target, index)
    if not target.is_class:
        raise JaxvizError("CAM explains a class; use grad_cam for a neuron target")
    layer = _layer(model, layer, model.cam_layer)
    n = x.shape[0]
    logits, caps = model.run(params, x, capture=(layer,))
    acts = caps[layer]
    _check_spatial(acts, layer, model)
    index = class_index(target.index if index is None else index, n, logits, logits.shape[-1], positive=True)
    if weights is None:
        if acts.shape[-1] != model.num_classes:
            raise JaxvizError(f"{layer} has {acts.shape[-1]} channels, not one per class: pass weights= "
                              "(cam_weights(model))")
        maps = take_class(acts, index)
    else:
        weights = jnp.asarray(weights)
        if weights.ndim != 2 or weights.shape[0] != acts.shape[-1]:
            raise JaxvizError(f"weights must be ({acts.shape[-1]}, classes) for {layer}, got {tuple(weights.shape)}")
        # a traced class out of range: NaN weights (indexing would clamp to another class)
        w = jnp.take(weights, index, axis=1, mode="fill", fill_value=jnp.nan).T  # (N, C)
        maps = jnp.einsum("nhwc,nc->nhw", acts, w)
    return upsample(jax.nn.relu(maps) if relu else maps, x.shape[1:3], resize)


def layer_gradients(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                    layer: str, index: Array | None = None) -> tuple[Array, Array]:
    """(A, d score / d A) at ``layer``, both (N, h, w, C): A read in one pass, the gradient taken
    over the array injected at ``layer`` (the rest of the network runs from there).

    Raises:
      JaxvizError: a neuron target that does not come after ``layer`` in the forward pass.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    check_images(x)
    target = as_target(target, index)
    if not target.is_class:
        order = model.layer_names
        explained, at = model.resolve_layer(target.layer), model.resolve_layer(layer)
        inside = explained.startswith(at + "/") or explained.startswith(at + ".")
        if inside or (explained in order and at in order and order.index(explained) <= order.index(at)):
            raise JaxvizError(f"neuron target {target.layer} must come after layer {layer} in the forward pass")
    acts = model.activation(params, x, layer)
    n = x.shape[0]

    def scores(a, idx):
        if target.is_class:
            check_target_index(target, model.num_classes)
            return class_scores_of(model, params, x, idx, target.score, inject={layer: a})[0]
        _, caps = model.run(params, x, capture=(target.layer,), inject={layer: a}, output=False)
        check_target_index(target, caps[target.layer].shape[-1])
        return neuron_scores(caps[target.layer], idx, target.y, target.x)

    if index is None and target.index is not None:
        index = jnp.full((n,), target.index, jnp.int32)
    if index is not None:
        index = per_image_index(index, n)
    return acts, jax.grad(lambda a: scores(a, index).sum())(acts)


def _combine(acts: Array, weights: Array, size: tuple[int, int], relu: bool, resize: Resize) -> Array:
    maps = jnp.einsum("nhwc,nc->nhw", acts, weights)
    return upsample(jax.nn.relu(maps) if relu else maps, size, resize)


@attribution_doc('Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep networks via gradient-based localization"')
def grad_cam(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
             layer: str | None = None, index: Array | None = None, relu: bool = True,
             resize: Resize = "bilinear") -> Array:
    """Grad-CAM: ReLU(sum_k a_k A_k) at ``layer``, a_k the spatial mean of d score / d A_k.

    Args:
      layer: any named layer with a spatial (h, w, C) output (default: the model's feature layer);
        a neuron target must come after it.
      relu: False keeps the signed map; resize: "bilinear" (default, cv2's half-pixel convention
        as pytorch-grad-cam), "nearest", or None for the layer's resolution.
    Returns:
      (N, H, W) maps (N, h, w with ``resize=None``), in the score's units times activation units;
      >= 0 unless ``relu=False``."""
    check("gradcam", relu=relu, resize=resize)
    model = as_model(model)
    layer = _layer(model, layer)
    acts, grads = layer_gradients(model, params, x, target, layer=layer, index=index)
    _check_spatial(acts, layer, model)
    return _combine(acts, grads.mean(axis=(1, 2)), x.shape[1:3], relu, resize)


@attribution_doc('Chattopadhay et al. 2018, "Grad-CAM++: generalized gradient-based visual explanations"')
def grad_cam_plus_plus(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                       layer: str | None = None, index: Array | None = None, relu: bool = True,
                       resize: Resize = "bilinear") -> Array:
    """Grad-CAM++: like ``grad_cam`` with per-position weights alpha from the second and third
    powers of the gradient (the closed form for an exponential score).

    Args:
      layer, relu, resize: as ``grad_cam``.
    Returns:
      (N, H, W) maps (N, h, w with ``resize=None``); >= 0 unless ``relu=False``."""
    check("gradcam++", relu=relu, resize=resize)
    model = as_model(model)
    layer = _layer(model, layer)
    acts, g = layer_gradients(model, params, x, target, layer=layer, index=index)
    _check_spatial(acts, layer, model)
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    a = jnp.where(g != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
    weights = (a * jax.nn.relu(g)).sum(axis=(1, 2))
    return _combine(acts, weights, x.shape[1:3], relu, resize)


def _layer(model, layer: str | None, default: str | None = None) -> str:
    """The layer to explain at: ``layer``, else ``default``, else the model's feature layer (a
    plain ``apply_fn`` has none: a clear error)."""
    if not model.has_layers:
        model.resolve_layer(layer or "")  # raises: no named layers
    return layer or default or model.feature_layer


def _check_spatial(acts: Array, layer: str, model=None) -> None:
    if acts.ndim != 4:
        raise JaxvizError(f"layer {layer} has no spatial map (shape {tuple(acts.shape[1:])}); "
                          "name a convolutional layer")
    if acts.shape[1] * acts.shape[2] == 0:
        smallest = f"; the smallest input that works is {model.smallest_input(layer)} px" if model else ""
        raise JaxvizError(f"layer {layer} is empty ({acts.shape[1]}x{acts.shape[2]}) at this input size{smallest}")


@attribution_doc('Selvaraju et al. 2017, "Grad-CAM" (guided Grad-CAM)')
def guided_grad_cam_attributions(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                                 layer: str | None = None, index: Array | None = None,
                                 resize: Resize = "bilinear") -> Array:
    """Guided backprop signal (N, H, W, 3) times the Grad-CAM map (N, H, W, 1), signed.

    ``resize``: how Grad-CAM is upsampled ("bilinear", or "nearest" as Captum's ``GuidedGradCam``).
    """
    check("guided-gradcam", resize=resize)  # a full-resolution map: bilinear or nearest, not None
    model = as_model(model)
    params = model.resolve_params(params)
    target = as_target(target, index)
    if index is None and target.is_class and target.index is None:
        index = resolve_index(model, params, x, target)
    gc = grad_cam(model, params, x, target, layer=layer, index=index, resize=resize)
    return guided_gradients(model, params, x, target, index=index) * gc[..., None]


@attribution_doc('Selvaraju et al. 2017, "Grad-CAM" (guided Grad-CAM)')
def guided_grad_cam(model: ModelLike, params: dict, x: Array, target: Target | int | None = None, *,
                    layer: str | None = None, index: Array | None = None,
                    resize: Resize = "bilinear") -> Array:
    """Guided Grad-CAM map (N, H, W): max over RGB of |guided backprop x Grad-CAM|."""
    return saliency_map(guided_grad_cam_attributions(model, params, x, target, layer=layer, index=index,
                                                     resize=resize))
