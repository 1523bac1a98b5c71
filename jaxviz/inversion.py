"""Feature inversion (Mahendran & Vedaldi 2015, "Understanding deep image representations by
inverting them"), through the one engine.

x* = argmin_x ‖Φ_l(x) − Φ_l(x0)‖² / ‖Φ_l(x0)‖² + λ · R_TV^β(x) / (H W B^β)

normalised as in the paper: the feature term is relative to ‖Φ0‖² (so 1 = "all information lost"
whatever the layer), and the TV^β term is divided by H W B^β with B the typical pixel norm, so that
λ means the same at any size and for any preprocessing. Here B is the RMS per-pixel norm of the
(mean-subtracted, model-input space) reference image, the data-driven version of the paper's
B = 80 for 0–255 images. The image is kept in the valid pixel range by projection (the paper's
bounded-range constraint). ``model`` is a ``jaxviz.interface.Model`` with named layers (any
adapter). Images are in model-input space; the start is small noise from one key per image (one key
is shared by every image), so image i of a batch equals the same image inverted alone (Adam).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import objectives as obj
from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.keys import image_keys
from jaxviz.optimize import (
    Callback,
    OptimizeResult,
    adam,
    empty_result,
    lbfgs,
    optimize,
    require_concrete,
    valid_range_projection,
)
from jaxviz.targets import require_finite
from jaxviz.techniques import check

Array = jax.Array


def pixel_scale(x0: Array) -> Array:
    """B per image: sqrt(mean over pixels of ‖x0_ij‖²) in model-input space, (N,)."""
    # eager on concrete images, on purpose: a jitted reduction's rounding depends on the batch
    # size (2.4e-7), and an image of a batch must invert exactly as it does alone
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(x0), axis=-1).reshape(x0.shape[0], -1), axis=1))


@functools.partial(jax.jit, static_argnums=2)
def _noise_start(keys: Array, b: Array, shape: tuple[int, ...]) -> Array:
    """The default start: Gaussian noise of RMS pixel norm 0.1 B per image (seeded by ``keys``);
    one program (elementwise: the same per image in any batch)."""
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 99), shape))(keys)
    return 0.1 * noise * b[:, None, None, None] / jnp.sqrt(3.0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _tv_factor(b: Array, hw: int, beta: float) -> Array:
    """1 / (H W B^β) per image, the TV term's normalisation (B held constant)."""
    return 1.0 / (hw * jax.lax.stop_gradient(b) ** beta)


@functools.lru_cache(maxsize=16)
def _tv_fn(beta: float):
    """TV^β times a per-image factor (the objective's data): the same function for the same β."""
    return lambda x, keys, factor: factor.astype(x.dtype) * obj.total_variation(x, beta)


def inversion_loss(model: ModelLike, params: dict, x0: Array, layer: str, *, tv_weight: float = 1.0,
                   beta: float = 2.0) -> obj.Objective:
    """The normalised objective: feature term + tv_weight · TV^β / (H W B^β), per image (N,)."""
    _, h, w, _ = x0.shape
    feat = obj.feature_match(model, params, layer, x0, normalize=True)
    factor = _tv_factor(pixel_scale(x0), h * w, float(beta))
    tv = obj.Objective(_tv_fn(float(beta)), f"tv({beta:g})/HWB^b", factor, pure=True)
    return feat + tv_weight * tv


def invert(model: ModelLike, params: dict | None, x0: Array, layer: str, *, steps: int = 200, lr: float | None = None,
           tv_weight: float = 1.0, beta: float = 2.0, optimizer: str = "adam", init: Array | None = None,
           key: Array | None = None, callbacks: Sequence[Callback] = ()) -> OptimizeResult:
    """Reconstruct images from their ``layer`` representation.

    Args:
      model: a jaxviz ``Model``; params: its parameters (None: ``model.params``).
      x0: (N, H, W, 3) reference images in model-input space.
      layer: layer name or alias whose activation is inverted.
      steps, lr: iterations and Adam learning rate (model-input units, default 0.05);
        ``optimizer="lbfgs"`` uses L-BFGS, whose line search sets each step (no ``lr``; one line
        search for the whole batch: pass one image for the paper's setting).
      tv_weight, beta: λ and β of the normalised TV^β regulariser.
      init: optional start (default: small noise from ``key``).
      key: one PRNG key (shared by every image) or (N,) per-image keys.
    Returns:
      ``OptimizeResult``; ``extras["feature_loss"]`` = (initial (N,), final (N,)) normalised
      feature distances.
    Raises:
      JaxvizError: bad shapes or settings (``lr`` with ``optimizer="lbfgs"``), an image size at
        which the layer is empty, a reference image that is zero in model-input space or whose
        features at ``layer`` are all zero, NaN or infinite values in ``x0`` or ``init``.
    """
    require_concrete("invert", params, x0, init, key)
    check("invert", steps=steps, lr=lr, tv_weight=tv_weight, beta=beta, optimizer=optimizer)
    model = as_model(model)
    params = model.resolve_params(params)
    given, layer = layer, model.resolve_layer(layer)
    x0 = jnp.asarray(x0, jnp.float32)
    if x0.ndim != 4 or x0.shape[-1] != 3:
        raise JaxvizError(f"x0 must be (N, H, W, 3), got {tuple(x0.shape)}")
    obj.require_nonempty(model, (given,), tuple(x0.shape[1:3]))
    require_finite("the reference images x0", x0)
    n = x0.shape[0]
    if n == 0:  # nothing to invert
        result = empty_result(x0)
        result.extras["feature_loss"] = (np.zeros((0,), np.float32), np.zeros((0,), np.float32))
        return result
    flat = np.flatnonzero(~np.asarray(x0).reshape(n, -1).any(axis=1))
    if flat.size:  # B = pixel_scale = 0: the TV term's normalisation 1 / B^beta is infinite
        raise JaxvizError(f"reference image(s) {flat.tolist()} are uniform at the model's preprocessing mean (zero in "
                          "model-input space): the regulariser is normalised by their pixel norm; use another image")
    if init is None:
        init = _noise_start(image_keys(key, n), pixel_scale(x0), tuple(x0.shape[1:]))
    init = jnp.asarray(init, jnp.float32)
    if init.shape != x0.shape:
        raise JaxvizError(f"init must have x0's shape {tuple(x0.shape)}, got {tuple(init.shape)}")
    params = model.prepare_params(params)
    loss = inversion_loss(model, params, x0, layer, tv_weight=tv_weight, beta=beta)
    feat = obj.feature_match(model, params, layer, x0)
    before = obj.evaluate(feat, init)
    opt = adam(0.05 if lr is None else float(lr)) if optimizer == "adam" else lbfgs()
    result = optimize(loss, init, optimizer=opt, steps=steps, project=valid_range_projection(model),
                      key=key, callbacks=callbacks, compiler_options=model.compiler_options)
    result.extras["feature_loss"] = (before, obj.evaluate(feat, result.images))
    return result
