"""Neural style transfer (Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
Networks", CVPR 2016) and the Gram-matrix losses it shares with texture synthesis (Gatys et al.
2015, ``jaxviz.texture``).

Losses, on VGG19 features ``F^l`` (N, H_l, W_l, C_l) of a batch of images (NHWC; ``N_l = C_l``
channels, ``M_l = H_l W_l`` positions, as in the paper):

- Gram matrix ``G^l = F^l F^lᵀ`` (C_l × C_l), batched: (N, C, C).
- Style layer loss ``E_l = 1/(4 N_l² M_l²) Σ (G^l − Ĝ^l)²``. Targets are stored as ``Ĝ/M̂``
  (``gram_matrix(..., normalize=True)``) so a style image of another size (``style_scale``) is
  compared per position; for equal sizes this is exactly the paper's ``E_l``.
- Content loss ``½ Σ (F^l − P^l)²`` (the paper's, a sum over the layer).
- Total variation ``Σ (x[i+1,j] − x[i,j])² + (x[i,j+1] − x[i,j])²`` (squared, smooth for L-BFGS).
- Total ``α L_content + β Σ_l w_l E_l + γ TV``; α/β is the content/style ratio of the paper.

Several styles blend by a weighted sum of their (normalised) Gram targets: for weights summing to
1, ``Σ_s a_s ‖G − Ĝ_s‖² = ‖G − Σ_s a_s Ĝ_s‖² + const``, so this is the weighted sum of the
per-style losses, with the same gradient. Colour preservation (Gatys et al. 2016, "Preserving
Color in Neural Artistic Style Transfer"): ``"luminance"`` transfers the YIQ luminance only (the
style's luminance matched to the content's mean/std) and puts back the content's I/Q;
``"histogram"`` first maps the style's colours to the content's mean and covariance.

The VGG runs only up to the deepest layer needed (``apply_fn(params, x, stop=deepest,
capture=...)``). Optimisation goes through the shared engine ``jaxviz.optimize`` (L-BFGS or
Adam), in model-input space, with the image clipped to the valid pixel range after every step.
The loss builders take preprocessed images; ``style_transfer`` takes images in [0, 1] because
colour preservation works in RGB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError

Array = jax.Array

CONTENT_LAYER = "conv4_2"
STYLE_LAYERS: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


# ----------------------------------------------------------------------------------------------
# Losses (pure, batched over the leading axis)

def gram_matrix(features: Array, normalize: bool = False) -> Array:
    """Gram matrices ``G = F Fᵀ`` of (N, H, W, C) features: (N, C, C); ``normalize`` divides by H W."""
    g = jnp.einsum("nhwc,nhwd->ncd", features, features)
    return g / (features.shape[1] * features.shape[2]) if normalize else g


def style_layer_loss(features: Array, target: Array) -> Array:
    """``E_l = 1/(4 N² M²) Σ (G − Ĝ)²`` per image: (N,).

    Args:
      features: (N, H, W, C) features of the images being optimised.
      target: (C, C) or (N, C, C) normalised target Gram ``Ĝ / M̂`` (``gram_matrix(., True)``).
    """
    c = features.shape[-1]
    diff = gram_matrix(features, normalize=True) - target
    return jnp.sum(diff * diff, axis=(-2, -1)) / (4.0 * c * c)


def content_loss(features: Array, target: Array) -> Array:
    """``½ Σ (F − P)²`` per image over (N, H, W, C) features: (N,)."""
    d = features - target
    return 0.5 * jnp.sum(d * d, axis=tuple(range(1, d.ndim)))


def tv_loss(x: Array) -> Array:
    """Squared total variation of (N, H, W, C) images: (N,)."""
    dy = x[:, 1:] - x[:, :-1]
    dx = x[:, :, 1:] - x[:, :, :-1]
    return jnp.sum(dy * dy, axis=(1, 2, 3)) + jnp.sum(dx * dx, axis=(1, 2, 3))


# ----------------------------------------------------------------------------------------------
# Features

def resolve_layers(spec, layers: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Resolved stage names of ``layers`` (aliases allowed) and the deepest of them."""
    if not layers:
        raise JaxvizError("at least one layer is needed")
    resolved = tuple(spec.resolve_layer(name) for name in layers)
    order = {name: i for i, name in enumerate(spec.layer_names)}
    return resolved, max(resolved, key=order.__getitem__)


def feature_fn(model, layers: Sequence[str]) -> Callable[[dict, Array], list[Array]]:
    """``f(params, x) -> [features of each layer]``, running the network only to the deepest one."""
    resolved, deepest = resolve_layers(model.spec, layers)
    apply = model.module.apply

    def f(params: dict, x: Array) -> list[Array]:
        _, acts = apply({"params": params}, x, stop=deepest, capture=resolved)
        return [acts[name] for name in resolved]
    return f


def gram_targets(features: Callable, params: dict, style_xs: Sequence[Array],
                 weights: Sequence[float] | None = None) -> list[Array]:
    """Blended normalised Gram targets ``Σ_s a_s Ĝ_s / M̂_s`` per layer: list of (C, C).

    Args:
      features: ``feature_fn(model, layers)``.
      style_xs: preprocessed style images, each (1, h, w, 3) (sizes may differ).
      weights: blend weights a_s (default equal); normalised to sum to 1.
    """
    a = np.ones(len(style_xs)) if weights is None else np.asarray(weights, np.float64)
    if a.shape != (len(style_xs),) or np.any(a < 0) or a.sum() <= 0:
        raise JaxvizError(f"style weights must be {len(style_xs)} non-negative numbers, not all 0; got {weights}")
    a = a / a.sum()
    targets = None
    for w, sx in zip(a, style_xs):
        grams = [gram_matrix(f, normalize=True)[0] * float(w) for f in jax.jit(features)(params, sx)]
        targets = grams if targets is None else [t + g for t, g in zip(targets, grams)]
    return targets


def style_loss_fn(features: Callable, params: dict, targets: Sequence[Array],
                  layer_weights: Sequence[float]) -> Callable[[Array], Array]:
    """``loss(x) -> (N,) Σ_l w_l E_l`` for preprocessed images x (N, H, W, 3)."""
    def loss(x: Array) -> Array:
        return sum(w * style_layer_loss(f, t) for w, f, t in zip(layer_weights, features(params, x), targets))
    return loss


# ----------------------------------------------------------------------------------------------
# Colour

_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                 [0.211456, -0.522591, 0.311135]], np.float32)


def rgb_to_yiq(images: Array) -> Array:
    """(..., 3) RGB -> YIQ (NTSC)."""
    return images @ jnp.asarray(_YIQ).T


def yiq_to_rgb(images: Array) -> Array:
    """(..., 3) YIQ -> RGB (exact inverse of ``rgb_to_yiq``)."""
    return images @ jnp.asarray(np.linalg.inv(_YIQ)).T


def match_luminance(style: Array, content: Array) -> Array:
    """Grey (Y, Y, Y) version of ``style`` with its luminance mean/std matched to ``content``'s.

    Args: style (..., h, w, 3), content (..., H, W, 3) in [0, 1]. Returns (..., h, w, 3).
    """
    ys, yc = rgb_to_yiq(style)[..., 0], rgb_to_yiq(content)[..., 0]
    y = (ys - ys.mean()) / (ys.std() + 1e-8) * yc.std() + yc.mean()
    return jnp.repeat(jnp.clip(y, 0.0, 1.0)[..., None], 3, axis=-1)


def match_color(style: Array, content: Array) -> Array:
    """``style`` with its colour mean and covariance mapped to ``content``'s (linear transfer).

    ``x' = Σ_c^{1/2} Σ_s^{-1/2} (x − μ_s) + μ_c`` with symmetric matrix square roots (Gatys et
    al. 2016's "colour histogram matching"). Args: (h, w, 3), (H, W, 3) in [0, 1].
    """
    def stats(img):
        flat = img.reshape(-1, 3).astype(jnp.float32)
        mu = flat.mean(0)
        d = flat - mu
        return mu, d.T @ d / flat.shape[0] + 1e-5 * jnp.eye(3)

    def sqrtm(c, power):
        w, v = jnp.linalg.eigh(c)
        return (v * jnp.maximum(w, 1e-10) ** power) @ v.T

    mu_s, cov_s = stats(style)
    mu_c, cov_c = stats(content)
    a = sqrtm(cov_c, 0.5) @ sqrtm(cov_s, -0.5)
    out = (style.reshape(-1, 3) - mu_s) @ a.T + mu_c
    return jnp.clip(out.reshape(style.shape), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Gatys style transfer

@dataclass
class StyleResult:
    """image: (H, W, 3) in [0, 1]; losses: (T,) total loss before each update; parts: final
    content / style / tv terms (weighted); seconds: optimisation wall time."""

    image: np.ndarray
    losses: np.ndarray
    parts: dict = field(default_factory=dict)
    seconds: float = 0.0
    compile_seconds: float = 0.0


def _images01(image, name: str) -> Array:
    image = jnp.asarray(image, jnp.float32)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise JaxvizError(f"{name} must be an (H, W, 3) RGB image, got shape {tuple(image.shape)}")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise JaxvizError(f"{name} must be at least 16x16 pixels, got {image.shape[:2]}")
    return image


def make_optimizer(optimizer: str, learning_rate: float | None = None):
    """``"lbfgs"`` (optax L-BFGS + zoom line search) or ``"adam"`` (model-input units per step)."""
    from jaxviz import optimize as engine
    if optimizer == "lbfgs":
        return engine.lbfgs()
    if optimizer == "adam":
        return engine.adam(10.0 if learning_rate is None else learning_rate)
    raise JaxvizError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")


def style_transfer(model, params: dict, content: Array, styles: Sequence[Array], *,
                   style_blend: Sequence[float] | None = None, content_layer: str = CONTENT_LAYER,
                   style_layers: Sequence[str] = STYLE_LAYERS, layer_weights: Sequence[float] | None = None,
                   content_weight: float = 1.0, style_weight: float = 1e3, tv_weight: float = 0.0,
                   style_scale: float = 1.0, preserve_color: Literal[None, "luminance", "histogram"] = None,
                   init: Literal["content", "style", "noise"] = "content", optimizer: str = "lbfgs",
                   steps: int = 100, learning_rate: float | None = None, key: Array | None = None,
                   callbacks: Sequence = ()) -> StyleResult:
    """Gatys et al. 2016 style transfer through the shared engine.

    Args:
      model, params: the VGG feature network (``vgg19_caffe``) and its parameters.
      content: (H, W, 3) or (1, H, W, 3) content image in [0, 1].
      styles: style images in [0, 1], each (h, w, 3) (any size; resized by ``style_scale``).
      style_blend: blend weights of the styles (default equal).
      content_layer, style_layers, layer_weights: where the losses are taken; layer weights w_l
        default to 1 / len(style_layers).
      content_weight, style_weight, tv_weight: α, β, γ of the total loss.
      style_scale: each style image is resized to ``style_scale × (H, W)`` of the content before
        its Grams are taken (larger = bigger brush strokes).
      preserve_color: None, ``"luminance"`` or ``"histogram"`` (see the module docstring).
      init: start from the content, the (first) style resized to the content, or white noise.
      optimizer, steps, learning_rate: ``"lbfgs"`` or ``"adam"`` (Adam's step in model units).
      key: PRNG key for the noise init.
    Returns:
      ``StyleResult`` with the stylised image in [0, 1] and the loss history.
    """
    from jaxviz import optimize as engine
    from jaxviz.images import fit_image

    content = _images01(content, "content")
    if not styles:
        raise JaxvizError("at least one style image is needed")
    styles = [_images01(s, f"style {i + 1}") for i, s in enumerate(styles)]
    if not 0.05 <= style_scale <= 8.0:
        raise JaxvizError(f"style_scale must be in [0.05, 8], got {style_scale}")
    if preserve_color not in (None, "luminance", "histogram"):
        raise JaxvizError(f"preserve_color must be None, 'luminance' or 'histogram', got {preserve_color!r}")
    if init not in ("content", "style", "noise"):
        raise JaxvizError(f"init must be 'content', 'style' or 'noise', got {init!r}")
    if min(content_weight, style_weight, tv_weight) < 0:
        raise JaxvizError("loss weights must be >= 0")
    if int(steps) < 0:
        raise JaxvizError(f"steps must be >= 0, got {steps}")
    style_layers = tuple(style_layers)
    w = (np.full(len(style_layers), 1.0 / max(len(style_layers), 1)) if layer_weights is None
         else np.asarray(layer_weights, np.float64))
    if w.shape != (len(style_layers),):
        raise JaxvizError(f"need {len(style_layers)} layer weights, got {len(w)}")

    h, wd = content.shape[:2]
    size = (max(16, round(h * style_scale)), max(16, round(wd * style_scale)))
    styles = [jnp.asarray(fit_image(np.asarray(s), size)) for s in styles]
    if preserve_color == "luminance":
        styles = [match_luminance(s, content) for s in styles]
        target_content = match_luminance(content, content)
    else:
        if preserve_color == "histogram":
            styles = [match_color(s, content) for s in styles]
        target_content = content

    layers = (content_layer,) + style_layers
    features = feature_fn(model, layers)
    style_targets = gram_targets(lambda p, x: features(p, x)[1:], params,
                                 [model.preprocess(s[None]) for s in styles], style_blend)
    content_x = model.preprocess(target_content[None])
    content_target = jax.jit(features)(params, content_x)[0]
    wl = [float(v) for v in w]

    def parts(x: Array) -> dict:
        feats = features(params, x)
        style = sum(wi * style_layer_loss(f, t) for wi, f, t in zip(wl, feats[1:], style_targets))
        return {"content": content_weight * content_loss(feats[0], content_target),
                "style": style_weight * style, "tv": tv_weight * tv_loss(x)}

    def loss_fn(x: Array, keys: Array) -> Array:
        p = parts(x)
        return p["content"] + p["style"] + p["tv"]

    if init == "content":
        x0 = content_x
    elif init == "style":
        x0 = model.preprocess(jnp.asarray(fit_image(np.asarray(styles[0]), (h, wd)))[None])
    else:
        k = jax.random.key(0) if key is None else key
        x0 = model.preprocess(jax.random.uniform(k, (1, h, wd, 3)))
    result = engine.optimize(loss_fn, x0, optimizer=make_optimizer(optimizer, learning_rate),
                             steps=int(steps), project=engine.valid_range_projection(model.spec),
                             callbacks=callbacks)
    image = jnp.clip(model.deprocess(result.images)[0], 0.0, 1.0)
    if preserve_color == "luminance":
        yiq = rgb_to_yiq(content)
        y = rgb_to_yiq(image)[..., 0]
        image = jnp.clip(yiq_to_rgb(jnp.concatenate([y[..., None], yiq[..., 1:]], -1)), 0.0, 1.0)
    final = {k: float(v[0]) for k, v in jax.jit(parts)(result.images).items()}
    return StyleResult(np.asarray(image), result.losses[:, 0], final, result.seconds, result.compile_seconds)
