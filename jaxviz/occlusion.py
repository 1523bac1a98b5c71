"""Occlusion sensitivity (Zeiler & Fergus 2014), batched and incremental (Krypton-style).

A ``window`` = (wh, ww) box (an int: square) slides over the image with step ``stride`` = (sh, sw)
and replaces the image under it by a fill. Positions follow Captum's ``Occlusion``: per axis
ceil((H - wh) / sh) + 1 of them, starting at 0, sh, 2 sh, ...; the last window is cropped at the
border, so with stride <= window (required) every pixel is occluded by at least one window. The
map is the DROP of the target score, score(x) - score(x occluded), one value per window position
(N, H', W'); ``occlusion_map`` spreads it back to pixels, each pixel the mean drop over the
windows covering it, which is Captum's attribution (for a 1x3 input, window 2, stride 2, fill 0
on Captum's ``BasicModel_MultiLayer``: [280, 280, 120]).

Conventions: ``model`` a ``jaxviz.interface.Model`` (any adapter) or a bare ``apply_fn(params, x)``;
``x`` (N, H, W, 3) preprocessed (model-input space), NHWC. Fills, in model-input space:
``"mean"`` (default) each image's own mean colour; ``"grey"`` the 0.5 grey through
``model.preprocessing`` (0.5 itself for a plain apply_fn, whose preprocessing is the identity);
``"zeros"``; ``"blur"`` a Gaussian-blurred copy (sigma = min(window) / 4); a number (Captum's
default is 0: pass ``fill=0`` to reproduce it); or a baseline image (H, W, 3) or per-image
baselines (N, H, W, 3), as Captum's ``baselines``. The class (or channel) is fixed from the clean
image (the predicted class unless ``target``/``index`` say otherwise).

Two exact implementations give the same maps:

- ``occlusion``: every occluded copy goes through the network, ``chunk`` copies per vmapped call
  (memory is bounded by ``chunk``); works on any model.
- ``incremental_occlusion`` (after Krypton, Nakandala, Kumar & Papakonstantinou, SIGMOD 2019): the
  clean image runs once and its activations are kept; for each window every layer recomputes only
  the box of its output the window can change (static box size, traced position, so it jits and
  vmaps; the layer kinds' rules in ``model.incremental_stages``). Once the box covers the whole
  map (or at the first global pooling / dense stage, or the target layer) the changed activation
  is injected at that layer (``model.inject``) and the rest of the network runs in full; under jit
  the work before it is dead code. Models whose structure is unknown (a user's linen / nnx model,
  a plain apply_fn) fall back to ``occlusion`` with an ``IncrementalFallbackWarning`` saying so.
  Approximate mode (Krypton's projective-field thresholding): ``threshold`` drops changes with
  |delta| <= threshold after every stage, so they stop propagating; ``max_box`` (a fraction tau of
  each stage's map) caps the static box size, re-centred on the remaining |delta| mass, which is
  what saves FLOPs under static shapes (``flop_saving(max_box=)``).

``occlusion_outputs`` returns the network's whole output (logits) for every window position
instead of one score's drop (either engine): Zeiler & Fergus's Fig. 7 reads p(true class) and
the most probable class (the "label map") from it.

Chunks run as a Python loop over one jitted chunk function (default; about 2x faster than
``lax.map`` on XLA-CPU, jax#12868) or, with ``loop="map"``, as one jitted ``lax.map`` (jittable
end to end). Both jit with the model's ``compiler_options``.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, PyTree, as_model
from jaxviz.interface.model import class_index
from jaxviz.metrics import gaussian_blur  # the same edge-padded blur as the deletion baseline
from jaxviz.targets import (SCORE_KINDS, Target, as_target, attribution_doc, check_target_index, class_scores,
                            class_scores_of, neuron_scores)

Array = jax.Array
Fill = Literal["mean", "grey", "zeros", "blur"]
FILLS = ("mean", "grey", "zeros", "blur")
Pair = tuple[int, int]


class IncrementalFallbackWarning(UserWarning):
    """Incremental occlusion was asked of a model without known layer structure: the batched
    engine computed the (identical) map instead."""


# --------------------------------------------------------------------------- shared pieces

def _pair(v: int | Sequence[int], what: str) -> Pair:
    try:
        pair = (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(a) for a in v)
    except (TypeError, ValueError):
        raise JaxvizError(f"{what} must be an int or a pair of ints, got {v!r}") from None
    if len(pair) != 2:
        raise JaxvizError(f"{what} must be an int or a pair (rows, cols), got {v!r}")
    if min(pair) < 1:
        raise JaxvizError(f"{what} must be at least 1 pixel, got {v!r}")
    return pair


def window_positions(height: int, width: int, window: int | Pair, stride: int | Pair) -> Pair:
    """Window positions (H', W') per axis, Captum's rule: ceil((H - wh) / sh) + 1, the last window
    cropped at the border."""
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    return -(-(height - wh) // sh) + 1, -(-(width - ww) // sw) + 1


def _check(x: Array, window: Pair, stride: Pair, chunk: int, fill, score) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise JaxvizError(f"occlusion expects images (N, H, W, 3), got shape {tuple(x.shape)}")
    from jaxviz.techniques import check
    check("occlusion", window=window, stride=stride, chunk=chunk)  # the registry's bounds, one place
    if window[0] > x.shape[1] or window[1] > x.shape[2]:
        raise JaxvizError(f"window {window[0]}x{window[1]} is larger than the {x.shape[1]}x{x.shape[2]} image")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise JaxvizError(f"stride {stride[0]}x{stride[1]} is larger than the window {window[0]}x{window[1]}: "
                          "pixels between windows would never be occluded")
    if isinstance(fill, str) and fill not in FILLS:
        raise JaxvizError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}, a number or a baseline image")
    if score is not None and score not in SCORE_KINDS:
        raise JaxvizError(f"unknown score {score!r}; use one of {', '.join(SCORE_KINDS)}")


def _as_target(target: Target | int | None, score: str | None, index=None) -> Target:
    target = as_target(target, index)
    if score is not None and target.is_class and score != target.score:
        target = Target(index=target.index, score=score)
    return target


def fill_images(x: Array, fill: Fill | float | Array = "mean", *, window: int | Pair = 16,
                preprocessing: Callable | None = None) -> Array:
    """(N, H, W, 3) -> (N, H, W, 3): what an occluded pixel becomes (model-input space).

    ``fill``: "mean" | "grey" (needs ``preprocessing``, e.g. ``model.preprocessing``) | "zeros" |
    "blur" (sigma = min(window) / 4) | a number | a baseline image (H, W, 3) or (N, H, W, 3).
    """
    if isinstance(fill, str):
        if fill == "mean":
            return jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
        if fill == "zeros":
            return jnp.zeros_like(x)
        if fill == "blur":
            return gaussian_blur(x, max(1.0, min(_pair(window, "window")) / 4))
        if fill == "grey":
            if preprocessing is None:
                raise JaxvizError("fill='grey' needs the model's preprocessing")
            return jnp.broadcast_to(preprocessing(jnp.full((1, 1, 1, 3), 0.5, x.dtype)), x.shape)
        raise JaxvizError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}, a number or a baseline image")
    if np.ndim(fill) == 0:
        if not isinstance(fill, jax.core.Tracer) and not np.isfinite(float(fill)):  # traced (a sweep): unchecked
            raise JaxvizError(f"fill must be finite, got {fill}")
        return jnp.full_like(x, fill)
    base = jnp.asarray(fill, x.dtype)
    if base.shape not in (x.shape, x.shape[1:]):
        raise JaxvizError(f"a baseline fill must have shape {tuple(x.shape[1:])} or {tuple(x.shape)}, "
                          f"got {tuple(base.shape)}")
    return jnp.broadcast_to(base, x.shape)


# The class index that stands for "the class predicted for the clean image" (found inside the
# jit): not -1, which counts from the end like any negative class, traced or not.
PREDICTED = np.iinfo(np.int32).min


def _resolve_index(model, x: Array, target: Target, index) -> Array:
    """(N,) class/channel per image; ``PREDICTED``: the clean image's predicted class. A class is
    counted from the end when negative (``class_index``), and checked when concrete; a traced one
    out of range gives NaN scores."""
    n = x.shape[0]
    given = index if index is not None else target.index
    if given is not None and target.is_class:
        return class_index(given, n, num_classes=model.num_classes, positive=True)
    if given is not None:
        return jnp.broadcast_to(jnp.asarray(given, jnp.int32), (n,))
    if not target.is_class:
        raise JaxvizError("a neuron target needs a channel")
    return jnp.full((n,), PREDICTED, jnp.int32)


def _grid(hp: int, wp: int, stride: Pair) -> np.ndarray:
    """(P, 2) top-left corners of all window positions, row-major (numpy: static data, so no
    eager jax op is compiled for it)."""
    ii, jj = np.meshgrid(np.arange(hp) * stride[0], np.arange(wp) * stride[1], indexing="ij")
    # JAX's default integer (int64 under jax_enable_x64): lax.dynamic_slice wants its start
    # indices, Python zeros included, all of one type
    return np.stack([ii.ravel(), jj.ravel()], axis=1).astype(jax.dtypes.canonicalize_dtype(np.int64))


def _padded_chunks(corners: np.ndarray, chunk: int) -> np.ndarray:
    """(P, 2) corners -> (P // chunk rounded up, chunk, 2), the last chunk padded by repetition."""
    p = corners.shape[0]
    chunk = min(chunk, p)
    pad = -p % chunk
    padded = np.concatenate([corners, np.repeat(corners[-1:], pad, axis=0)]) if pad else corners
    return padded.reshape(-1, chunk, 2)


def windows_to_pixels(drops: Array, size: Pair, window: int | Pair, stride: int | Pair) -> Array:
    """(N, H', W') drops per window -> (N, H, W) mean drop over the windows covering each pixel
    (windows cropped at the border; 0 where none covers a pixel, impossible with stride <= window)."""
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")

    def cover(n_pos: int, n_pix: int, w: int, s: int) -> np.ndarray:  # (pixels, positions) 0/1 incidence
        pix, pos = np.arange(n_pix)[:, None], np.arange(n_pos)[None, :] * s
        return ((pix >= pos) & (pix < pos + w)).astype(np.float32)
    a, b = cover(drops.shape[1], size[0], wh, sh), cover(drops.shape[2], size[1], ww, sw)
    total = jnp.einsum("yi,nij,xj->nyx", a, drops, b)
    count = a.sum(1)[:, None] * b.sum(1)[None, :]
    return jnp.where(count > 0, total / np.maximum(count, 1), 0.0)


def _scores(model, params, x: Array, target: Target, index: Array) -> Array:
    """(B,) scores of ``x`` (B, H, W, 3) for a fixed class/channel per copy."""
    if target.is_class:
        return class_scores_of(model, params, x, index, target.score)[0]
    acts = model.activation(params, x, target.layer)
    check_target_index(target, acts.shape[-1])
    return neuron_scores(acts, index, target.y, target.x)


def _clean_scores(logits_or_acts: Array, target: Target, index: Array) -> tuple[Array, Array]:
    """Clean scores and classes (the predicted class where ``index`` is ``PREDICTED``)."""
    check_target_index(target, logits_or_acts.shape[-1])
    if not target.is_class:
        return neuron_scores(logits_or_acts, index, target.y, target.x), index
    index = jnp.where(index == PREDICTED, jnp.argmax(logits_or_acts, axis=-1).astype(jnp.int32), index)
    return class_scores(logits_or_acts, index, target.score), index


# --------------------------------------------------------------------------- drivers
# An engine (batched or incremental) is hashable (a static jit argument) and has two pure methods:
#   clean(params, x, base, idx) -> (clean scores (N,), classes (N,), state)   (once per image)
#   chunk(params, x, base, idx, state, corners (c, 2)) -> (N, c) occluded scores
# Two drivers run it: one jitted lax.map over chunks (jittable end to end), or a Python loop over
# one jitted chunk, which measured ~2x faster on XLA-CPU for these conv-heavy bodies (jax#12868).

def _clean(engine, params, x, base, idx):
    return engine.clean(params, x, base, idx)


def _chunk(engine, params, x, base, idx, state, corners):
    return engine.chunk(params, x, base, idx, state, corners)


def _mapped(engine, params, x, base, idx, chunk):
    clean, idx, state = engine.clean(params, x, base, idx)
    hp, wp = window_positions(x.shape[1], x.shape[2], engine.window, engine.stride)
    chunks = _padded_chunks(_grid(hp, wp, engine.stride), chunk)
    scores = jax.lax.map(lambda cs: engine.chunk(params, x, base, idx, state, cs), chunks)
    scores = jnp.moveaxis(scores, 0, 1)
    scores = scores.reshape((x.shape[0], -1) + scores.shape[3:])[:, :hp * wp]
    if engine.outputs:
        return scores.reshape((-1, hp, wp) + scores.shape[2:])
    return (clean[:, None] - scores).reshape(-1, hp, wp)


_STATIC = {_clean: (0,), _chunk: (0,), _mapped: (0, 5)}


@functools.lru_cache(maxsize=None)
def _jitted(fn: Callable, options: tuple) -> Callable:
    """``fn`` jitted with the model's XLA options (a top-level call); plain jit when nested."""
    plain = jax.jit(fn, static_argnums=_STATIC[fn])
    if not options:
        return plain
    tuned = jax.jit(fn, static_argnums=_STATIC[fn], compiler_options=dict(options))

    def call(*args):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args[1:])):
            return plain(*args)  # inside a caller's transformation XLA takes no options
        return tuned(*args)
    return call


def _drive(engine, params, x, base, idx, chunk: int, loop: str) -> Array:
    options = tuple(getattr(engine.model, "compiler_options", ()) or ())
    if loop == "map":
        return _jitted(_mapped, options)(engine, params, x, base, idx, chunk)
    if loop != "python":
        raise JaxvizError(f"unknown loop {loop!r}; use 'python' or 'map'")
    clean, idx, state = _jitted(_clean, options)(engine, params, x, base, idx)
    hp, wp = window_positions(x.shape[1], x.shape[2], engine.window, engine.stride)
    chunks = _padded_chunks(_grid(hp, wp, engine.stride), chunk)
    step = _jitted(_chunk, options)
    scores = jnp.concatenate([step(engine, params, x, base, idx, state, cs) for cs in chunks], axis=1)
    if engine.outputs:
        return scores[:, :hp * wp].reshape((-1, hp, wp) + scores.shape[2:])
    return (clean[:, None] - scores[:, :hp * wp]).reshape(-1, hp, wp)


def _prepare(model, params, x, target, window, stride, chunk, fill, score, index):
    """Validated (model, params, target, window, stride, base, index)."""
    model = as_model(model)
    params = model.resolve_params(params)
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    _check(x, window, stride, chunk, fill, score)
    target = _as_target(target, score, index)
    if not target.is_class:
        target = Target(index=target.index, layer=model.resolve_layer(target.layer), y=target.y, x=target.x,
                        score=target.score)
    base = fill_images(x, fill, window=window, preprocessing=model.preprocessing)
    return model, params, target, window, stride, base, _resolve_index(model, x, target, index)


# --------------------------------------------------------------------------- batched

@dataclass(frozen=True)
class _Batched:
    """Every occluded copy through the whole network."""

    model: Any
    target: Target
    window: Pair
    stride: Pair
    outputs: bool = False  # chunk() returns (N, c, K) outputs instead of (N, c) scores

    def clean(self, params, x, base, idx):
        t = self.target
        out = self.model.logits(params, x) if t.is_class else self.model.activation(params, x, t.layer)
        clean, idx = _clean_scores(out, t, idx)
        return clean, idx, ()

    def chunk(self, params, x, base, idx, state, corners):
        (wh, ww), (h, w) = self.window, x.shape[1:3]
        rows, cols = jnp.arange(h), jnp.arange(w)

        def one(x1, base1, idx1):
            def occluded(c):  # a mask, not dynamic_update_slice: the last window is cropped, not moved
                inside = (((rows >= c[0]) & (rows < c[0] + wh))[:, None, None]
                          & ((cols >= c[1]) & (cols < c[1] + ww))[None, :, None])
                return jnp.where(inside, base1, x1)
            xs = jax.vmap(occluded)(corners)
            if self.outputs:
                return self.model.apply(params, xs)
            return _scores(self.model, params, xs, self.target, jnp.broadcast_to(idx1, (corners.shape[0],)))
        return jax.vmap(one)(x, base, idx)


@attribution_doc('Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks"')
def occlusion(model: ModelLike, params: PyTree, x: Array, target: Target | int | None = None, *,
              window: int | Pair = 16, stride: int | Pair = 8, fill: Fill | float | Array = "mean",
              score: str | None = None, chunk: int = 32, index: Array | None = None,
              loop: str = "python") -> Array:
    """Score drop per window position, every occluded copy evaluated (vmapped chunks); any model.

    Args:
      model: a ``jaxviz.interface.Model`` or an ``apply_fn(params, x)`` (static under jit).
      params: the model's variables (None: ``model.params``).
      x: (N, H, W, 3) preprocessed images.
      target: a ``Target`` (class or neuron), a class index, or None (predicted class).
      window, stride: window size and step in pixels, an int or (rows, cols); stride <= window.
      fill: "mean" | "grey" | "zeros" | "blur" | a number | a baseline (H, W, 3) or (N, H, W, 3).
      score: "logit" | "prob" | "logprob" for class targets (None: the target's own).
      chunk: occluded copies per vmapped evaluation (bounds memory).
      index: (N,) class/channel per image, overriding the target's.
      loop: "python" (a Python loop over one jitted chunk; fastest on CPU) or "map" (one jitted
        ``lax.map`` over chunks, for use inside a caller's jit).
    Returns:
      (N, H', W') drops, H' = ceil((H - wh) / sh) + 1 (``window_positions``).
    Raises:
      JaxvizError: bad shapes, sizes, fill or score; a neuron target on a model without layers.
    """
    model, params, target, window, stride, base, index = _prepare(model, params, x, target, window, stride,
                                                                  chunk, fill, score, index)
    return _drive(_Batched(model, target, window, stride), params, x, base, index, chunk, loop)


@attribution_doc('Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks"')
def occlusion_map(model: ModelLike, params: PyTree, x: Array, target: Target | int | None = None, *,
                  window: int | Pair = 16, stride: int | Pair = 8, fill: Fill | float | Array = "mean",
                  score: str | None = None, chunk: int = 32, index: Array | None = None,
                  incremental: bool = False, loop: str = "python") -> Array:
    """(N, H, W) score drop per pixel, averaged over the windows that cover it (Captum's attribution),
    in the score's units (logit by default; positive: occluding there lowers the score).

    ``incremental=True`` uses ``incremental_occlusion`` (same values; batched, with a warning,
    for models without known structure); other arguments as ``occlusion``.

    Raises:
      JaxvizError: as ``occlusion``.
    """
    fn = incremental_occlusion if incremental else occlusion
    drops = fn(model, params, x, target, window=window, stride=stride, fill=fill, score=score, chunk=chunk,
               index=index, loop=loop)
    return windows_to_pixels(drops, x.shape[1:3], window, stride)


# --------------------------------------------------------------------------- incremental

def _stop_inside(stage, layer: str | None) -> bool:
    return layer is not None and layer.startswith(stage.name + "/")


def incremental_plan(stages: Sequence, size: Pair, window: Pair, layer: str | None = None,
                     max_box: float | None = None) -> list[tuple[Any, Pair, Pair, Pair]]:
    """Static plan: [(stage, input size, input box, output box after the ``max_box`` cap)] of
    the stages run incrementally: up to (excluding) the first global pooling / dense stage or
    stage without a rule, through the stage whose output is ``layer`` (before the stage ``layer``
    is inside of), and no further than the first stage whose box covers its whole map."""
    hw, box, plan = tuple(size), tuple(window), []
    for stage in stages:
        if stage.pooling or not stage.incremental or _stop_inside(stage, layer):
            break
        out_hw, out_box, _ = stage.plan(hw, box)
        if max_box is not None:
            out_box = tuple(min(b, max(1, math.ceil(max_box * n))) for b, n in zip(out_box, out_hw))
        plan.append((stage, hw, box, out_box))
        hw, box = out_hw, out_box
        if stage.name == layer or box == hw:
            break
    return plan


def _threshold(change, clean: Array, threshold: float | None):
    """Approximate mode: drop changes with |delta| <= threshold (they stop propagating)."""
    if threshold is None:
        return change
    a, b, patch = change
    ref = jax.lax.dynamic_slice(clean, (a, b, 0), patch.shape)
    return a, b, jnp.where(jnp.abs(patch - ref) > threshold, patch, ref)


def _shrink(change, clean: Array, size: Pair, threshold: float | None):
    """Approximate mode: crop the box to static ``size``, centred on the |delta| mass."""
    a, b, patch = change
    h, w = patch.shape[:2]
    if h <= size[0] and w <= size[1]:
        return change
    hc, wc = min(h, size[0]), min(w, size[1])
    ref = jax.lax.dynamic_slice(clean, (a, b, 0), patch.shape)
    mag = jnp.abs(patch - ref).max(axis=-1)
    mag = jnp.where(mag > (threshold or 0.0), mag, 0.0)
    total = jnp.maximum(mag.sum(), 1e-30)

    def start(weights, n, c):
        centre = (weights * jnp.arange(n)).sum() / total
        return jnp.clip(jnp.floor(centre - (c - 1) / 2 + 0.5).astype(jnp.int32), 0, n - c)

    sr, sc = start(mag.sum(1), h, hc), start(mag.sum(0), w, wc)
    return a + sr, b + sc, jax.lax.dynamic_slice(patch, (sr, sc, 0), (hc, wc, patch.shape[-1]))


@dataclass(frozen=True)
class _Incremental:
    """Clean activations once per image; per window only the boxes it can change, then the rest
    of the network from the last incremental stage (``model.run(inject=...)``)."""

    model: Any
    target: Target
    window: Pair
    stride: Pair
    threshold: float | None = None
    max_box: float | None = None
    outputs: bool = False  # chunk() returns (N, c, K) outputs instead of (N, c) scores

    def _plan(self, params, hw):
        stages = self.model.incremental_stages
        if not self.outputs and self.target.is_class and self.target.score == "logit":
            stages = _before_class_head(self.model)  # the tail computes one class there
        plan = incremental_plan(stages, hw, self.window, self.target.layer, self.max_box)
        stage_params = [self.model.layer_params(params, st.name) or {} for st, *_ in plan]
        return plan, stage_params, plan[-1][0].name

    def _tail(self, params, x1: Array, last: str, acts: Array, idx: Array) -> Array:
        """(B,) scores (or clean logits / activations when ``idx`` is None) of ``acts`` (B, h, w, C)
        injected at ``last``; ``x1`` (H, W, 3) only gives shapes (dead code under jit)."""
        xb = jnp.broadcast_to(x1, (acts.shape[0],) + x1.shape)
        t = self.target
        if t.is_class and idx is not None:
            return class_scores_of(self.model, params, xb, idx, t.score, inject={last: acts})[0]
        if t.is_class:
            return self.model.logits(params, xb, inject={last: acts})
        out = self.model.run(params, xb, capture=(t.layer,), inject={last: acts}, output=False)[1][t.layer]
        check_target_index(t, out.shape[-1])
        return out if idx is None else neuron_scores(out, idx, t.y, t.x)

    def clean(self, params, x, base, idx):
        plan, stage_params, last = self._plan(params, x.shape[1:3])

        def one(x1, idx1):
            act, ctxs = x1, []
            for (stage, *_), p in zip(plan, stage_params):
                out, ctx = stage.clean(p, act)
                ctxs.append((ctx, out))
                act = out
            clean, idx1 = _clean_scores(self._tail(params, x1, last, act[None], None), self.target, idx1[None])
            return clean[0], idx1[0], (ctxs, act)
        return jax.vmap(one)(x, idx)

    def chunk(self, params, x, base, idx, state, corners):
        plan, stage_params, last = self._plan(params, x.shape[1:3])
        (wh, ww), (h, w) = self.window, x.shape[1:3]

        def one(x1, base1, idx1, state1):
            ctxs, act = state1

            def window_act(c):
                # the window's box, moved inside the image if it is cropped at the border; the
                # part outside the true window keeps the clean values (no change there)
                a, b = jnp.minimum(c[0], h - wh), jnp.minimum(c[1], w - ww)
                inside = ((a + jnp.arange(wh)) >= c[0])[:, None, None] & ((b + jnp.arange(ww)) >= c[1])[None, :, None]
                patch = jnp.where(inside, jax.lax.dynamic_slice(base1, (a, b, 0), (wh, ww, 3)),
                                  jax.lax.dynamic_slice(x1, (a, b, 0), (wh, ww, 3)))
                change = (a, b, patch)
                for (stage, hw, _, cap), p, (ctx, out) in zip(plan, stage_params, ctxs):
                    change = _threshold(stage.update(p, ctx, change, hw), out, self.threshold)
                    if self.max_box is not None:
                        change = _shrink(change, out, cap, self.threshold)
                a, b, patch = change
                return jax.lax.dynamic_update_slice(act, patch, (a, b, 0))

            acts = jax.vmap(window_act)(corners)
            if self.outputs:
                return self._tail(params, x1, last, acts, None)
            return self._tail(params, x1, last, acts, jnp.broadcast_to(idx1, (corners.shape[0],)))
        return jax.vmap(one)(x, base, idx, state)


def _incremental_reason(model, size: Pair, window: Pair, layer: str | None) -> str | None:
    """Why incremental occlusion cannot run on ``model`` (None: it can)."""
    stages = getattr(model, "incremental_stages", None)
    if not stages:
        return f"{model.name} declares no layer structure (model.incremental_stages is None)"
    if not incremental_plan(stages, size, window, layer):
        return f"{model.name}'s first stage has no incremental rule" + (f" before {layer}" if layer else "")
    return None


@attribution_doc('Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks"; incremental after Krypton, Nakandala, Kumar & Papakonstantinou 2019')
def incremental_occlusion(model: ModelLike, params: PyTree, x: Array, target: Target | int | None = None, *,
                          window: int | Pair = 16, stride: int | Pair = 8, fill: Fill | float | Array = "mean",
                          score: str | None = None, chunk: int = 32, index: Array | None = None,
                          threshold: float | None = None, max_box: float | None = None,
                          loop: str = "python") -> Array:
    """Score drop per window position (N, H', W'), recomputing only the boxes a window changes.

    ``model``'s ``incremental_stages`` (the bundled networks' layer kinds) give the rules; a
    model without them gets ``occlusion`` (the same values) and an ``IncrementalFallbackWarning``.
    Other arguments as ``occlusion``. ``threshold=None`` is exact (equal to ``occlusion`` up to
    float rounding); a float drops changes with |delta| <= threshold after every stage.
    ``max_box`` (0 < tau <= 1) caps each stage's changed box at tau of its map (approximate; fewer
    FLOPs, see ``flop_saving(max_box=)``); None = no cap.

    Returns:
      (N, H', W') drops, as ``occlusion``.
    Raises:
      JaxvizError: as ``occlusion``; a ``max_box`` outside (0, 1] or a negative ``threshold``.
    """
    if max_box is not None and not 0 < max_box <= 1:
        raise JaxvizError(f"max_box must be in (0, 1], got {max_box}")
    if threshold is not None and not threshold >= 0:  # NaN fails too
        raise JaxvizError(f"threshold must be >= 0 (a change of at most it is dropped), got {threshold}")
    model, params, target, window, stride, base, index = _prepare(model, params, x, target, window, stride,
                                                                  chunk, fill, score, index)
    reason = _incremental_reason(model, x.shape[1:3], window, target.layer)
    if reason is not None:
        warnings.warn(f"incremental occlusion: {reason}; computing batched occlusion instead (same values"
                      + (", threshold/max_box not applied" if threshold is not None or max_box is not None else "")
                      + ")", IncrementalFallbackWarning, stacklevel=2)
        engine = _Batched(model, target, window, stride)
    else:
        engine = _Incremental(model, target, window, stride, None if threshold is None else float(threshold),
                              None if max_box is None else float(max_box))
    return _drive(engine, params, x, base, index, chunk, loop)


def occlusion_outputs(model: ModelLike, params: PyTree, x: Array, *, window: int | Pair = 16, stride: int | Pair = 8,
                      fill: Fill | float | Array = "mean", chunk: int = 32, incremental: bool = True,
                      loop: str = "python") -> Array:
    """The network's output (logits) for every window position: (N, H', W', K).

    Zeiler & Fergus (2014, Fig. 7) read two maps from it: the probability of the true class
    (``softmax(out)[..., c]``) and the most probable class (``argmax(out, -1)``, the label map).
    ``incremental=True`` (default) recomputes only what each window changes on models with known
    layer structure (``incremental_occlusion``'s engine; others fall back to every occluded copy
    through the network, with an ``IncrementalFallbackWarning``); the values are the same.
    Other arguments as ``occlusion``. The model must output a vector per image (a classifier).

    Raises:
      JaxvizError: bad shapes, sizes or fill; a model whose output is not (N, K).
    """
    model, params, target, window, stride, base, index = _prepare(model, params, x, None, window, stride,
                                                                  chunk, fill, None, None)
    out = jax.eval_shape(lambda p, a: model.apply(p, a), params, x[:1])
    if len(out.shape) != 2:
        raise JaxvizError(f"occlusion_outputs needs a model with one output vector per image, "
                          f"got output shape {tuple(out.shape)}")
    reason = _incremental_reason(model, x.shape[1:3], window, None) if incremental else None
    if incremental and reason is not None:
        warnings.warn(f"incremental occlusion: {reason}; every occluded copy goes through the network "
                      "instead (same values)", IncrementalFallbackWarning, stacklevel=2)
    if not incremental or reason is not None:
        engine = _Batched(model, target, window, stride, outputs=True)
    else:
        engine = _Incremental(model, target, window, stride, outputs=True)
    return _drive(engine, params, x, base, index, chunk, loop)


# --------------------------------------------------------------------------- FLOP saving

def _before_class_head(model) -> tuple:
    """The stages before the model's class head (all of them without one): where incremental
    occlusion of a class logit stops, since ``selected_logits`` computes one class of the head."""
    stages, head = model.incremental_stages, model.class_head
    return stages if head is None else stages[:head]


def _flops(model, size: Pair, window: Pair | None, max_box: float | None = None, one_class: bool = False) -> float:
    """2 x multiply-adds of convs/denses per forward pass (window None: full; else incremental);
    ``one_class``: the class head computes one class (``selected_logits``), where the model has one."""
    stages = model.incremental_stages
    boxes = {} if window is None else {st.name: box for st, _, box, _ in incremental_plan(
        _before_class_head(model) if one_class else stages, size, window, None, max_box)}
    head = model.class_head if one_class else None
    total, hw = 0.0, tuple(size)
    for i, stage in enumerate(stages):
        areas = stage.plan(hw, boxes.get(stage.name))[2]
        flops = stage.flops(model.layer_params(model.params, stage.name) or {}, areas)
        total += flops / stage.features if i == head else flops
        hw = stage.out_hw(hw)
    return total


def flop_saving(model: ModelLike, *, input_size: int | Pair, window: int | Pair, stride: int | Pair,
                max_box: float | None = None) -> float:
    """Theoretical FLOP ratio full / incremental over all window positions (conv + dense MACs).

    Full: every occluded copy runs the whole network. Incremental: the clean image once, then per
    window only the static boxes (``incremental_plan``) up to the point where they cover the map
    (or the first pooling/dense stage), the rest in full; ``max_box`` as in ``incremental_occlusion``.
    Both score one class per image, so a class head that can compute one class
    (``selected_logits``: SqueezeNet's 1x1 classifier) counts one class's multiply-adds.
    """
    model = as_model(model)
    if not getattr(model, "incremental_stages", None):
        raise JaxvizError(f"flop_saving needs a model with known layer structure; {model.name} declares none")
    size, window = _pair(input_size, "input_size"), _pair(window, "window")
    hp, wp = window_positions(size[0], size[1], window, stride)
    positions = hp * wp
    full = _flops(model, size, None, one_class=True)
    incr = _flops(model, size, window, max_box, one_class=True)
    return float((positions + 1) * full / (positions * incr + full))
