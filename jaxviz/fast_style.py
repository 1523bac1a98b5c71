"""Fast feed-forward style transfer (Johnson, Alahi & Fei-Fei, "Perceptual Losses for Real-Time
Style Transfer and Super-Resolution", ECCV 2016) with instance normalisation (Ulyanov, Vedaldi &
Lempitsky 2016) and conditional instance normalisation for many styles in one network (Dumoulin,
Shlens & Kudlur, "A Learned Representation for Artistic Style", ICLR 2017).

Network (``TransformNet``): reflect-padded 9×9 conv → two stride-2 3×3 convs → ``res_blocks``
residual blocks → two (nearest ×2 upsample + 3×3 conv) stages (Dumoulin et al.'s fix for
checkerboard artefacts) → 9×9 conv → sigmoid, RGB in [0, 1]. Every conv but the last is followed
by (conditional) instance norm and ReLU. A CIN layer holds per-style ``gamma``/``beta`` of shape
(S, C); the network takes a (N, S) style-weight matrix and uses ``γ = wᵀΓ``, ``β = wᵀB`` — a
one-hot row is one style, a mixed row blends styles (exactly style s for the s-th unit vector).
A single-style network is S = 1.

Training minimises the perceptual loss of the loss network (``vgg19_caffe`` by default; any
``jaxviz.interface.Model`` with named layers, features through ``model.activations``): ``content_weight ×
½ mean (F − P)²`` at ``content_layer`` plus ``style_weight × Σ_l E_l`` (Gram losses of
``jaxviz.style``, normalised per position) at ``style_layers`` plus ``tv_weight × TV``. Each
training image gets a random style (one-hot) per step. Batches are random crops/flips of the
content images drawn from ``fold_in(key, step)``, so a run resumed from a checkpoint continues
exactly as an uninterrupted one. This module opens no file: the content images come in as arrays
(``jaxviz.datasets.load_content_folder`` reads a folder) and the training state (config, network
parameters, optax state, step, key) is saved and restored by ``jaxviz.checkpoints`` (one flax
msgpack file). (Ported, pretrained parameters such as multistyle26's are safetensors files of the
weights store instead: ``jaxviz.fast_style_pretrained``.)

Stylisation is one jitted forward pass on any (N, H, W, 3) batch with H and W divisible by 4.
``compiler_options`` (XLA options for that jit and for the training step) come from the caller:
the front ends pass ``jaxviz.accel.xla.compiler_options(dense_convolutions=True)`` (XLA-CPU's
Eigen convolutions, ~3x the frames per second here); the training step defaults to the loss
model's ``model.compiler_options``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.interface.linen import Conv, QuickParamCheck
from jaxviz.style import check_layers, gram_matrix, layer_features, style_layer_loss, tv_loss
from jaxviz.targets import require_finite

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Network

class ConditionalInstanceNorm(QuickParamCheck, nn.Module):
    """Instance norm with per-style affine parameters: γ, β = weightsᵀ Γ, weightsᵀ B.

    Input (N, H, W, C) and style weights (N, S); ``gamma``/``beta`` params are (S, C).
    """

    num_styles: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, weights: Array) -> Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (self.num_styles, c))
        beta = self.param("beta", nn.initializers.zeros, (self.num_styles, c))
        mean = x.mean(axis=(1, 2), keepdims=True)
        var = x.var(axis=(1, 2), keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        g = (weights @ gamma)[:, None, None, :]
        b = (weights @ beta)[:, None, None, :]
        return y * g + b


def _reflect_conv(x: Array, conv: Conv, kernel: int) -> Array:
    p = kernel // 2
    return conv(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"))


class ConvINRelu(nn.Module):
    features: int
    kernel: int
    stride: int = 1
    num_styles: int = 1
    relu: bool = True
    upsample: bool = False

    @nn.compact
    def __call__(self, x: Array, weights: Array) -> Array:
        if self.upsample:  # nearest x2 then conv (no transposed-conv checkerboard)
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        x = _reflect_conv(x, Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                                  padding="VALID", name="conv"), self.kernel)
        x = ConditionalInstanceNorm(self.num_styles, name="norm")(x, weights)
        return nn.relu(x) if self.relu else x


class TransformNet(nn.Module):
    """Johnson et al.'s transformation network with (conditional) instance norm.

    ``__call__(images (N, H, W, 3) in [0, 1], weights (N, S)) -> (N, H, W, 3) in [0, 1]``.
    """

    num_styles: int = 1
    width: int = 32  # channels of the first conv; Johnson et al. use 32 (then 64, 128)
    res_blocks: int = 5

    @nn.compact
    def __call__(self, images: Array, weights: Array) -> Array:
        s, w = self.num_styles, self.width
        x = images * 2.0 - 1.0
        x = ConvINRelu(w, 9, 1, s, name="down0")(x, weights)
        x = ConvINRelu(2 * w, 3, 2, s, name="down1")(x, weights)
        x = ConvINRelu(4 * w, 3, 2, s, name="down2")(x, weights)
        for i in range(self.res_blocks):
            y = ConvINRelu(4 * w, 3, 1, s, name=f"res{i}a")(x, weights)
            x = x + ConvINRelu(4 * w, 3, 1, s, relu=False, name=f"res{i}b")(y, weights)
        x = ConvINRelu(2 * w, 3, 1, s, upsample=True, name="up1")(x, weights)
        x = ConvINRelu(w, 3, 1, s, upsample=True, name="up2")(x, weights)
        x = _reflect_conv(x, Conv(3, (9, 9), padding="VALID", name="out"), 9)
        return jax.nn.sigmoid(x)


@dataclass(frozen=True)
class FastStyleConfig:
    """Everything needed to rebuild a network and its training (stored in checkpoints)."""

    num_styles: int = 1
    width: int = 32
    res_blocks: int = 5
    size: int = 128
    batch: int = 4
    learning_rate: float = 1e-3
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    content_weight: float = 1.0
    style_weight: float = 1e-6  # E_l of relu features is ~1e10 at init; content is a per-element mean
    tv_weight: float = 1e-5
    loss_model: str = "vgg19_caffe"
    style_names: tuple[str, ...] = ()

    def network(self) -> TransformNet:
        return TransformNet(self.num_styles, self.width, self.res_blocks)


def check_image_size(shape: Sequence[int]) -> None:
    """Raise ``JaxvizError`` unless (N, H, W, 3) with H, W positive multiples of 4."""
    if len(shape) != 4 or shape[-1] != 3:
        raise JaxvizError(f"fast style needs (N, H, W, 3) images, got shape {tuple(shape)}")
    h, w = shape[1], shape[2]
    if h % 4 or w % 4 or h < 4 or w < 4:
        raise JaxvizError(f"fast style needs height and width divisible by 4, got {h}x{w}")


def style_weights(num_styles: int, mix: Sequence[float] | None = None, n: int = 1) -> Array:
    """(n, S) style weights: ``mix`` (length S, need not sum to 1) or the first style."""
    if mix is None:
        w = np.eye(num_styles, dtype=np.float32)[0]
    else:
        w = np.asarray(mix, np.float32)
        if w.shape != (num_styles,):
            raise JaxvizError(f"style mix needs {num_styles} weights (one per style), got {len(w)}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise JaxvizError("style mix weights must be finite and >= 0")
        if not np.any(w):  # no style at all: a flat image
            raise JaxvizError("style mix weights are all 0: give at least one style a weight")
    return jnp.broadcast_to(jnp.asarray(w), (n, num_styles))


def _apply(net: TransformNet, params: dict, images: Array, weights: Array) -> Array:
    return net.apply({"params": params}, images, weights)


@functools.lru_cache(maxsize=8)
def _forward(options: tuple = ()) -> Callable:
    """The jitted forward pass with XLA ``options`` (one per options tuple; the net is static)."""
    kwargs = {"compiler_options": dict(options)} if options else {}
    return jax.jit(_apply, static_argnames=("net",), **kwargs)


def _traced(*trees) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def stylize(net: TransformNet, params: dict, images: Array, weights: Array | None = None, *,
            compiler_options: tuple = ()) -> Array:
    """Stylise (N, H, W, 3) images in [0, 1] in one jitted forward pass.

    Args:
      net: the ``TransformNet`` (``config.network()``).
      params: its parameters.
      images: (N, H, W, 3), H and W divisible by 4.
      weights: (N, S) or (S,) style weights (default: style 0).
      compiler_options: XLA options of the jitted pass (the front ends pass
        ``jaxviz.accel.xla.compiler_options(dense_convolutions=True)``); inside a caller's
        ``jit``/``vmap``/``grad`` the pass is plain (XLA takes options only at the top level).
    Returns:
      (N, H, W, 3) stylised images in [0, 1].
    Raises:
      JaxvizError: bad image shape or style weights.
    """
    images = jnp.asarray(images, jnp.float32)
    check_image_size(images.shape)
    n = images.shape[0]
    if weights is None:
        weights = style_weights(net.num_styles, None, n)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim == 1:
        weights = jnp.broadcast_to(weights, (n, weights.shape[0]))
    if weights.shape != (n, net.num_styles):
        raise JaxvizError(f"style weights must be ({n}, {net.num_styles}), got {tuple(weights.shape)}")
    require_finite("style weights", weights)  # all-NaN images otherwise
    if _traced(params, images, weights):
        return _apply(net, params, images, weights)
    return _forward(tuple(compiler_options))(net, params, images, weights)


# ----------------------------------------------------------------------------------------------
# Training

@dataclass
class TrainState:
    step: int
    params: dict
    opt_state: object
    key: Array
    losses: list = field(default_factory=list)


def check_config(config: FastStyleConfig) -> None:
    """The configuration's numbers checked once, by the technique registry ("fast-style-train").

    Raises:
      JaxvizError: a size, batch, width, block count, learning rate or loss weight out of range.
    """
    from jaxviz.techniques import check
    check("fast-style-train", size=config.size, batch=config.batch, width=config.width,
          res_blocks=config.res_blocks, learning_rate=config.learning_rate, style_weight=config.style_weight,
          content_weight=config.content_weight, tv_weight=config.tv_weight)
    if config.num_styles < 1:
        raise JaxvizError(f"num_styles must be >= 1, got {config.num_styles}")


def init_state(config: FastStyleConfig, key: Array) -> TrainState:
    """Fresh parameters (from ``key``) and Adam state (``check_config`` first)."""
    check_config(config)
    k_init, k_data = jax.random.split(key)
    net = config.network()
    dummy = jnp.zeros((1, 16, 16, 3), jnp.float32)
    weights = jnp.ones((1, config.num_styles), jnp.float32) / config.num_styles

    def fresh(k):
        params = net.init(k, dummy, weights)["params"]
        return params, optax.adam(config.learning_rate).init(params)
    # One program: run eagerly, flax's initialisers compile a small program per operation and
    # shape (about 100, 6 s of a cold process's compile time on 2 cores). It is mostly random-bit
    # generation, whose full LLVM optimisation took 2.7 s to compile on 2 cores for nothing
    # (run once, same run time at level 1, 1.2 s); the values do not depend on the level.
    try:
        params, opt_state = jax.jit(fresh, compiler_options={"xla_backend_optimization_level": 1})(k_init)
    except Exception:  # a backend or jax that does not take the option (same program without it)
        params, opt_state = jax.jit(fresh)(k_init)
    return TrainState(0, params, opt_state, k_data)


def random_crops(images: Array, key: Array, batch: int, size: int) -> Array:
    """``batch`` random ``size`` crops (with random horizontal flips) of (K, H, W, 3) images.

    Raises:
      JaxvizError: images smaller than ``size`` on a side.
    """
    k_img, k_y, k_x, k_f = jax.random.split(key, 4)
    k, h, w, _ = images.shape
    if min(h, w) < size:
        raise JaxvizError(f"crops of {size} px need images at least that large, got {h}x{w}")
    idx = jax.random.randint(k_img, (batch,), 0, k)
    ys = jax.random.randint(k_y, (batch,), 0, h - size + 1)
    xs = jax.random.randint(k_x, (batch,), 0, w - size + 1)
    flips = jax.random.bernoulli(k_f, 0.5, (batch,))

    def one(i, y, x, f):
        crop = jax.lax.dynamic_slice(images[i], (y, x, 0), (size, size, 3))
        return jnp.where(f, crop[:, ::-1], crop)
    return jax.vmap(one)(idx, ys, xs, flips)


def make_train_step(config: FastStyleConfig, loss_model: ModelLike, loss_params: dict, style_images: Sequence[Array], *,
                    compiler_options: tuple | None = None) -> Callable:
    """The jitted step ``(params, opt_state, key, step, content_images) -> (params, opt_state, loss)``.

    Args:
      config: the training config (its ``content_layer`` / ``style_layers`` name layers of
        ``loss_model``).
      loss_model: the feature network (``vgg19_caffe`` or any ``jaxviz.interface.Model`` with
        named layers).
      loss_params: its parameters.
      style_images: S style images in [0, 1], each (h, w, 3).
      compiler_options: XLA options of the step (default ``loss_model.compiler_options``; the
        transform net is dense, so a dense-convolution choice suits it too).
    Raises:
      JaxvizError: wrong number of style images, unknown layers or layers empty at the crop size,
        a configuration out of range (``check_config``).
    """
    check_config(config)
    loss_model = as_model(loss_model)
    if len(style_images) != config.num_styles:
        raise JaxvizError(f"config has {config.num_styles} styles but {len(style_images)} style images were given")
    net = config.network()
    layers = (config.content_layer,) + tuple(config.style_layers)
    check_layers(loss_model, loss_params, layers, (config.size, config.size), spatial=tuple(config.style_layers))
    features = layer_features(loss_model, layers)
    feature_jit = jax.jit(features)
    # (S, C, C) normalised Gram targets per style layer
    per_style = [[gram_matrix(f, normalize=True)[0] for f in
                  feature_jit(loss_params, loss_model.preprocess(jnp.asarray(s, jnp.float32)[None]))[1:]]
                 for s in style_images]
    targets = [jnp.stack([g[l] for g in per_style]) for l in range(len(layers) - 1)]
    opt = optax.adam(config.learning_rate)
    wl = 1.0 / len(config.style_layers)

    def loss_fn(params, content, weights, loss_params, targets):
        out = net.apply({"params": params}, content, weights)
        f_out = features(loss_params, loss_model.preprocess(out))
        f_in = features(loss_params, loss_model.preprocess(content))
        c = 0.5 * jnp.mean((f_out[0] - jax.lax.stop_gradient(f_in[0])) ** 2)
        s = sum(wl * jnp.mean(style_layer_loss(f, jnp.einsum("ns,scd->ncd", weights, t)))
                for f, t in zip(f_out[1:], targets))
        tv = jnp.mean(tv_loss(out))
        return config.content_weight * c + config.style_weight * s + config.tv_weight * tv

    def train_step(params, opt_state, key, step, content_images, loss_params, targets):
        k = jax.random.fold_in(key, step)
        k_crop, k_style = jax.random.split(k)
        batch = random_crops(content_images, k_crop, config.batch, config.size)
        styles = jax.random.randint(k_style, (config.batch,), 0, config.num_styles)
        weights = jax.nn.one_hot(styles, config.num_styles)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, weights, loss_params, targets)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    options = tuple(loss_model.compiler_options if compiler_options is None else compiler_options)
    # The loss network's weights and the Gram targets are arguments, not constants closed over:
    # as constants XLA folds and stores them in the executable (a 12 MB cache entry, +3 s compile).
    jitted = jax.jit(train_step, compiler_options=dict(options)) if options else jax.jit(train_step)

    def step(params, opt_state, key, step, content_images):
        return jitted(params, opt_state, key, step, content_images, loss_params, targets)
    return step


def train(config: FastStyleConfig, state: TrainState, step_fn: Callable, content_images: Array, steps: int,
          callback: Callable[[int, float], None] | None = None) -> TrainState:
    """Run ``steps`` more training steps from ``state`` (a Python loop over the jitted step).

    Args:
      content_images: (K, H, W, 3) content images in [0, 1], H, W >= ``config.size``.
    """
    content_images = jnp.asarray(content_images, jnp.float32)
    if content_images.ndim != 4 or min(content_images.shape[1:3]) < config.size:
        raise JaxvizError(f"content images must be (K, H, W, 3) with H, W >= {config.size}, "
                          f"got {tuple(content_images.shape)}")
    params, opt_state = state.params, state.opt_state
    losses = list(state.losses)
    for i in range(state.step, state.step + int(steps)):
        params, opt_state, loss = step_fn(params, opt_state, state.key, jnp.int32(i), content_images)
        losses.append(float(loss))
        if callback is not None:
            callback(i, losses[-1])
    return TrainState(state.step + int(steps), params, opt_state, state.key, losses)
