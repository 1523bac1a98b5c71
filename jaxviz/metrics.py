"""Faithfulness and sanity metrics for attribution maps.

* **Deletion / insertion** (Petsiuk, Das & Saenko 2018, *RISE*): pixels are removed from the image
  (replaced by a baseline) or added to the baseline in decreasing order of saliency, in ``steps``
  equal fractions; the curve is the softmax probability of the explained class after each step and
  its area (trapezoid rule over the fraction axis [0, 1]) summarises it. A faithful map gives a
  LOW deletion AUC (the score collapses early) and a HIGH insertion AUC. A random order
  (``random_order_maps``) is the baseline to beat.
* **Model randomisation** (Adebayo et al. 2018, *Sanity checks for saliency maps*, cascading):
  layers are re-initialised from the top (logits) down and the maps recomputed; the Spearman rank
  correlation with the original maps should fall. A method whose maps barely change (mean |rho|
  above a threshold once every layer is random) does not depend on what the model learned.

Conventions: ``model`` is a ``jaxviz.interface.Model`` (deletion/insertion also accept a bare
``apply_fn``; the randomisation check needs named layers and reaches their weights only through
``model.layer_params`` / ``model.replace_layer_params``, so it runs on linen, nnx and bundled
models alike); images ``x`` are PREPROCESSED (model input space), NHWC; maps are (N, H, W) at the
input resolution; ``index`` (N,) are class indices. Step k removes/inserts the ``(k * H * W) //
steps`` most salient pixels (ties broken by pixel order), so step 0 is the clean image (deletion)
or the pure baseline (insertion) and step ``steps`` the reverse. Baselines, in input space:
"blur" (Gaussian, sigma ``blur_sigma`` px, edge padding; RISE's default), "mean" (each image's mean
colour) or "zero" (zeros of the preprocessed input).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, PyTree, as_model
from jaxviz.interface.model import class_index, layer_tuple
from jaxviz.keys import typed_key
from jaxviz.targets import Target, as_target, require_finite

Array = jax.Array
Baseline = Literal["blur", "mean", "zero"]
BASELINES = ("blur", "mean", "zero")


# --------------------------------------------------------------------------- deletion / insertion

def gaussian_blur(x: Array, sigma: float) -> Array:
    """(N, H, W, C) -> separable Gaussian blur per channel, edge padding (weights sum to one).
    ``sigma`` in pixels, a Python number > 0 (the kernel's size depends on it).

    Raises:
      JaxvizError: sigma not a positive finite number (0 gave NaN images).
    """
    if not (isinstance(sigma, (int, float, np.integer, np.floating)) and np.isfinite(sigma) and sigma > 0):
        raise JaxvizError(f"blur sigma must be a positive number of pixels, got {sigma!r}")
    radius = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), x.dtype)
    xp = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    # Sum of shifted copies: exact, simple, and cheap next to the network evaluations.
    rows = sum(k[i] * xp[:, i:i + h, :, :] for i in range(2 * radius + 1))
    return sum(k[i] * rows[:, :, i:i + w, :] for i in range(2 * radius + 1))


BLUR_SIGMA = 5.0  # pixels: the blur baseline's default sigma


def baseline_images(x: Array, baseline: Baseline = "blur", blur_sigma: float = BLUR_SIGMA) -> Array:
    """(N, H, W, C) images -> (N, H, W, C) baseline images of the chosen kind (input space)."""
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    if baseline == "mean":
        return jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    if baseline == "zero":
        return jnp.zeros_like(x)
    raise JaxvizError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")


def saliency_ranks(maps: Array) -> Array:
    """(N, H, W) maps -> (N, H*W) int32 rank of each pixel (0 = most salient; ties by position)."""
    flat = maps.reshape(maps.shape[0], -1)
    order = jnp.argsort(-flat, axis=-1, stable=True)
    n, p = flat.shape
    ranks = jnp.zeros((n, p), jnp.int32)
    return ranks.at[jnp.arange(n)[:, None], order].set(jnp.arange(p, dtype=jnp.int32)[None, :])


def random_order_maps(key: Array, shape: Sequence[int]) -> Array:
    """Maps of i.i.d. uniform values, shape (N, H, W): a random pixel order, the chance baseline."""
    return jax.random.uniform(key, tuple(shape))


def trapezoid_auc(curves: Array) -> Array:
    """(..., steps+1) values at fractions 0, 1/steps, ..., 1 -> (...) area by the trapezoid rule."""
    steps = curves.shape[-1] - 1
    return (curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / steps


def deletion_insertion(model: ModelLike, params: dict, x: Array, maps: Array, index: Array | None = None, *,
                       steps: int = 32, baseline: Baseline = "blur", chunk: int = 32,
                       blur_sigma: float | None = None, patch: int = 1) -> dict[str, Array]:
    """Deletion and insertion curves of saliency ``maps`` and their areas.

    Args:
      model: a ``jaxviz.interface.Model`` (or ``apply_fn(params, x) -> (B, classes)`` logits).
      params: model parameters.
      x: (N, H, W, 3) preprocessed images.
      maps: (N, H, W) saliency (higher = more important); only the pixel order matters.
      index: (N,) class indices (or a scalar for all images) whose probability is scored;
        None = each image's predicted class.
      steps: number of equal fractions (static); curves have ``steps + 1`` points.
      baseline: "blur" | "mean" | "zero": what removed pixels become / insertion starts from.
      chunk: perturbed images per network call (bounds memory; static).
      blur_sigma: Gaussian sigma in pixels of the "blur" baseline (> 0; None: 5.0); with another
        baseline it must stay None (it would do nothing).
      patch: 1 ranks single pixels (RISE); p > 1 ranks p x p cells of the grid by their mean
        saliency and moves whole cells (region perturbation, Samek et al. 2017), which keeps a
        random order from acting as salt-and-pepper noise. Static.
    Returns:
      dict with ``deletion`` and ``insertion`` (N, steps+1) softmax probabilities of class
      ``index`` and ``deletion_auc``, ``insertion_auc`` (N,) trapezoid areas over fractions [0, 1].
    Raises:
      JaxvizError: mismatched shapes, unknown baseline, non-positive steps/chunk, a ``blur_sigma``
        with a baseline that does not blur, a model without class logits.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    x, maps = jnp.asarray(x), jnp.asarray(maps)
    if getattr(x, "ndim", None) == 4 and x.shape[-1] == 3:  # model.logits: one clear error for a feature extractor
        if index is None:
            index = jnp.argmax(model.logits(params, x), axis=-1)
        else:
            jax.eval_shape(model.logits, params, x)  # the check alone, no forward pass
    check_deletion_inputs(x, maps, index, steps, baseline, chunk)
    if x.shape[0] == 0:  # no images: no curves (the jitted sweep cannot split zero jobs into chunks)
        curves, areas = (jax.device_put(np.zeros(shape, np.float32)) for shape in ((0, steps + 1), (0,)))
        return {"deletion": curves, "insertion": curves, "deletion_auc": areas, "insertion_auc": areas}
    index = class_index(index, x.shape[0], num_classes=model.num_classes, positive=True)  # checked, from the end
    if not isinstance(patch, int) or not 1 <= patch <= min(x.shape[1:3]):
        raise JaxvizError(f"patch must be an integer between 1 and the image side, got {patch!r}")
    from jaxviz.techniques import check
    check("deletion-insertion", baseline=baseline, blur_sigma=blur_sigma)
    blur_sigma = BLUR_SIGMA if blur_sigma is None else float(blur_sigma)
    return _deletion_insertion(model, params, x, maps, index, steps=steps, baseline=baseline,
                               chunk=chunk, blur_sigma=blur_sigma, patch=patch)


def cell_maps(maps: Array, patch: int) -> Array:
    """(N, H, W) -> (N, ceil(H/p), ceil(W/p)) mean of each p x p cell (edge cells: their pixels).

    Raises:
      JaxvizError: ``patch`` not a whole number >= 1.
    """
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise JaxvizError(f"patch must be a whole number >= 1, got {patch!r}")
    n, h, w = maps.shape
    gh, gw = -(-h // patch), -(-w // patch)
    pad = ((0, 0), (0, gh * patch - h), (0, gw * patch - w))
    total = jnp.pad(maps, pad).reshape(n, gh, patch, gw, patch).sum((2, 4))
    count = jnp.pad(jnp.ones((1, h, w), maps.dtype), pad).reshape(1, gh, patch, gw, patch).sum((2, 4))
    return total / count


@partial(jax.jit, static_argnames=("model", "steps", "baseline", "chunk", "blur_sigma", "patch"))
def _deletion_insertion(model, params, x, maps, index, *, steps, baseline, chunk, blur_sigma, patch):
    n, h, w, _ = x.shape
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))
    base = baseline_images(x, baseline, blur_sigma)
    cells = cell_maps(maps, patch)
    gh, gw = cells.shape[1:]
    # Each pixel carries the rank of its cell; step k moves the (k * cells) // steps first cells.
    ranks = jnp.repeat(jnp.repeat(saliency_ranks(cells).reshape(n, gh, gw), patch, 1), patch, 2)[:, :h, :w]
    counts = (jnp.arange(steps + 1) * (gh * gw)) // steps

    # One job per (image, mode, step): built inside its chunk, so at most `chunk` copies exist.
    total = n * 2 * (steps + 1)
    chunk = min(chunk, total)
    padded = -(-total // chunk) * chunk
    job = jnp.arange(padded) % total  # padding repeats real jobs; their results are dropped
    img, rest = job // (2 * (steps + 1)), job % (2 * (steps + 1))
    insertion, step = rest // (steps + 1), rest % (steps + 1)

    def evaluate(jobs):
        i, ins, k = jobs
        moved = ranks[i] < counts[k][:, None, None]  # (B, H, W): the top-k pixels of the order
        keep_clean = jnp.where(ins[:, None, None] == 1, moved, ~moved)
        images = jnp.where(keep_clean[..., None], x[i], base[i])
        probs = jax.nn.softmax(model.apply(params, images).astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(probs, index[i][:, None], axis=-1)[:, 0]

    jobs = tuple(a.reshape(-1, chunk) for a in (img, insertion, step))
    scores = jax.lax.map(evaluate, jobs).reshape(-1)[:total].reshape(n, 2, steps + 1)
    deletion, insertion_curve = scores[:, 0], scores[:, 1]
    return {"deletion": deletion, "insertion": insertion_curve,
            "deletion_auc": trapezoid_auc(deletion), "insertion_auc": trapezoid_auc(insertion_curve)}


def check_deletion_inputs(x: Array, maps: Array, index: Array | int | None, steps: int, baseline: str, chunk: int) -> None:
    """Boundary checks for ``deletion_insertion`` (raise ``JaxvizError`` with what was expected)."""
    if getattr(x, "ndim", None) != 4:
        raise JaxvizError(f"images must be (N, H, W, C), got shape {getattr(x, 'shape', None)}")
    if tuple(maps.shape) != tuple(x.shape[:3]):
        raise JaxvizError(f"maps must be (N, H, W) = {tuple(x.shape[:3])}, got {tuple(maps.shape)}")
    require_finite("maps", maps)  # NaN saliency: the pixel order would be undefined
    if np.ndim(index) not in (0, 1) or (np.ndim(index) == 1 and len(index) != x.shape[0]):
        raise JaxvizError(f"index must be a scalar or ({x.shape[0]},), got shape {np.shape(index)}")
    from jaxviz.techniques import check
    check("deletion-insertion", steps=steps, chunk=chunk, baseline=baseline)


# --------------------------------------------------------------------------- model randomisation

def average_ranks(values: Array) -> Array:
    """(..., P) -> ranks 0..P-1 along the last axis, tied values sharing their average rank."""
    s = jnp.sort(values, axis=-1)
    lo = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(
        s.reshape(-1, s.shape[-1]), values.reshape(-1, s.shape[-1]))
    hi = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(
        s.reshape(-1, s.shape[-1]), values.reshape(-1, s.shape[-1]))
    return ((lo + hi - 1) / 2.0).reshape(values.shape)


@jax.jit
def spearman(a: Array, b: Array) -> Array:
    """Spearman rank correlation per image of (N, ...) arrays -> (N,) (average ranks for ties).

    A constant map has no ranking; its correlation is defined as 0 here.
    """
    ra = average_ranks(a.reshape(a.shape[0], -1).astype(jnp.float32))
    rb = average_ranks(b.reshape(b.shape[0], -1).astype(jnp.float32))
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    denom = jnp.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))
    return jnp.where(denom > 0, (ra * rb).sum(-1) / jnp.where(denom > 0, denom, 1.0), 0.0)


_STATISTICS = ("mean", "var")  # batch-norm running statistics: not learned weights


def _leaf_name(path) -> str | None:
    """The last dict key / attribute of a pytree path, skipping nnx's ``.value``."""
    for entry in reversed(path):
        name = getattr(entry, "key", None)
        if name is None:
            name = getattr(entry, "name", None)
        if name is not None and name != "value":
            return str(name)
    return None


def redraw_leaves(tree: PyTree, key: Array, salt: int = 0) -> PyTree:
    """``tree`` with every learned leaf (kernel, bias, batch-norm scale) re-drawn i.i.d. normal with
    the leaf's own mean and standard deviation (same shape, scale and dtype); leaves named
    ``mean`` / ``var`` (running statistics) are kept. The original is not modified.

    The noise is drawn with numpy from the words of ``key`` (and ``salt``): same key, same
    weights. (JAX's threefry draws compile for seconds per new leaf shape on CPU, and this runs
    once per layer, outside any jit.)
    """
    words = [int(w) for w in np.asarray(jax.random.key_data(typed_key(key))).ravel()]
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = []
    for m, (path, leaf) in enumerate(flat):
        if _leaf_name(path) in _STATISTICS:
            leaves.append(leaf)
            continue
        value = np.asarray(leaf)
        rng = np.random.default_rng(np.random.SeedSequence(words + [int(salt), m]))
        drawn = value.mean(dtype=np.float64) + value.std(dtype=np.float64) * rng.standard_normal(value.shape)
        leaves.append(jnp.asarray(drawn.astype(value.dtype)))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _has_weights(tree) -> bool:
    return tree is not None and any(jnp.size(v) for v in jax.tree_util.tree_leaves(tree))


def randomise_params(model: ModelLike, params: PyTree, layers: Sequence[str], key: Array) -> PyTree:
    """A copy of ``params`` with the named layers' parameters re-drawn at random (``redraw_leaves``),
    through ``model.layer_params`` / ``model.replace_layer_params`` (originals untouched).

    Raises:
      JaxvizError: a layer without parameters.
    """
    model = as_model(model)
    for n, layer in enumerate(layers):
        owned = model.layer_params(params, layer)
        if not _has_weights(owned):
            raise JaxvizError(f"layer {layer} has no parameters; choose from "
                              f"{', '.join(parametrised_layers(model, params))}")
        params = model.replace_layer_params(params, layer, redraw_leaves(owned, key, salt=n))
    return params


def parametrised_layers(model: ModelLike, params: PyTree | None = None) -> list[str]:
    """The model's layers that hold parameters, top (logits) first.

    Only the innermost: a layer whose parameters all belong to named sub-layers (a linen block
    containing convolutions) is represented by those sub-layers.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    owning = [n for n in model.layer_names if _has_weights(model.layer_params(params, n))]
    inner = [n for n in owning
             if not any(o != n and (o.startswith(n + "/") or o.startswith(n + ".")) for o in owning)]
    return inner[::-1]


def cascading_maps(method: Callable, model: ModelLike, params: PyTree, x: Array, target: Target | int | None, *,
                   key: Array,
                   layers: Sequence[str] | None = None, jit: bool = True
                   ) -> tuple[list[str], Array, list[Array]]:
    """The maps behind ``model_randomisation``: (layers, trained maps (N, H, W), [maps per depth])."""
    model = as_model(model)
    params = model.resolve_params(params)
    target = as_target(target)  # an int is a class (it was read as None: the predicted class)
    if layers is None:
        layers = parametrised_layers(model, params)
    else:  # one name as a string is one layer
        layers = [model.resolve_layer(name) for name in layer_tuple(layers)]
    if not layers:
        raise JaxvizError(f"model {model.name} has no named layers with parameters to randomise; the check "
                          "needs named layers (a bundled network, or a flax.linen / flax.nnx module)")
    missing = [l for l in layers if not _has_weights(model.layer_params(params, l))]
    if missing:
        raise JaxvizError(f"layer(s) {', '.join(missing)} have no parameters; "
                          f"choose from {', '.join(parametrised_layers(model, params))}")
    n = x.shape[0]
    if target.is_class:  # checked here, on the host: under jit an out-of-range class is only NaN
        logits = model.apply(params, x) if target.index is None else None
        num_classes = model.num_classes or (None if logits is None else logits.shape[-1])
        index = class_index(target.index, n, logits, num_classes)
    else:
        index = jnp.full((n,), target.index, jnp.int32)
    if jit:
        method = jax.jit(method, static_argnums=(0, 3))
    original = method(model, params, x, target, index=index)
    maps = [method(model, randomise_params(model, params, layers[:depth], key), x, target, index=index)
            for depth in range(1, len(layers) + 1)]
    return layers, original, maps


def model_randomisation(method: Callable, model: ModelLike, params: PyTree, x: Array, target: Target | int | None,
                        *, key: Array,
                        layers: Sequence[str] | None = None, jit: bool = True) -> list[tuple[str, Array]]:
    """Cascading model-randomisation sanity check (Adebayo et al. 2018).

    Args:
      method: ``method(model, params, x, target, index=...) -> (N, H, W)`` saliency maps (any
        function of ``jaxviz.saliency`` / ``jaxviz.cam``).
      model: a ``jaxviz.interface.Model`` with named layers (its ``layer_names`` order the cascade).
      params: the trained parameters (never modified).
      x: (N, H, W, 3) preprocessed images.
      target: a ``jaxviz.targets.Target`` or a class index; a class target without index explains each image's
        class predicted by the TRAINED model, held fixed as the layers are randomised.
      key: ``jax.random`` key for the new weights.
      layers: layers to randomise, in cascade order (default: ``parametrised_layers``, from the
        logits down); layer ``i``'s entry has layers ``0..i`` randomised.
      jit: compile ``method`` once (model and target static; the randomised parameters keep
        their structure, so every layer reuses the compilation). False for non-jittable methods.
    Returns:
      ``[(layer, rho), ...]``: rho (N,) is the Spearman correlation of each image's map with the
      map of the trained model. See ``randomisation_flag``.
    Raises:
      JaxvizError: a named layer has no parameters, a model without named layers (a bare
        ``apply_fn``), a class out of range.
    """
    layers, original, maps = cascading_maps(method, model, params, x, target, key=key, layers=layers, jit=jit)
    return [(layer, spearman(original, m)) for layer, m in zip(layers, maps)]


def randomisation_flag(results: Sequence[tuple[str, Array]], threshold: float = 0.5) -> bool:
    """True (the method FAILS the check) when the mean |rho| with every layer random > threshold.

    Raises:
      JaxvizError: no results (no layer was randomised).
    """
    if not results:
        raise JaxvizError("no randomisation results: model_randomisation randomised no layer")
    return bool(jnp.abs(results[-1][1]).mean() > threshold)
