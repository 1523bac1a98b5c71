"""The one image-optimisation engine: objective + parameterisation + optax optimiser + transforms +
projection + per-image stop + callbacks (Lucid/Lucent's ``render`` loop, DeepMind's attack parts).

Everything that optimises an *image* with frozen weights runs through ``optimize``: class and
neuron visualisation (Simonyan et al. 2014; Yosinski et al. 2015, "Understanding neural networks
through deep visualization"), feature inversion (Mahendran & Vedaldi 2015), DeepDream, iterative
adversarial attacks (``jaxviz.adversarial``) and Gram texture / Gatys style synthesis
(``jaxviz.texture``, ``jaxviz.style``).

Contract
--------
``optimize(loss_fn, init, *, optimizer, steps, parameterization=None, transforms=(), project=None,
active=None, callbacks=(), key=None, data=None, compiler_options=()) -> OptimizeResult``

- ``init``: (N, H, W, C) images in *model-input space* (``model.preprocess(images01)``), or
  whatever space the caller's ``loss_fn``/``project`` use (``jaxviz.adversarial`` uses [0, 1]).
- ``loss_fn(x, keys) -> (N,)``: per-image losses to MINIMISE; ``keys`` are (N,) per-image PRNG
  keys of this step (ignore them if the loss is deterministic). Images must be independent (no
  batch statistics): then the gradient of ``sum(losses)`` w.r.t. image i is the gradient of its
  own loss, and a batch of N images optimises exactly like N separate runs (vmap-equivalent).
  Objectives from ``jaxviz.objectives`` are such functions and compose with ``+ - *``; the engine
  passes an ``Objective``'s arrays (weights, classes, term weights) to the jitted step as traced
  data and caches the step by its pure function, so a second call with other weights or classes
  reuses the compiled step.
- ``optimizer``: any optax ``GradientTransformation`` (``sgd``, ``adam``, ``sign_gradient``,
  ``normalized_gradient`` below, ``optax.*``) or L-BFGS (``lbfgs`` below). L-BFGS with a line
  search (``optax.lbfgs()``) is detected from its state and driven with
  ``optax.value_and_grad_from_state`` and the line search on the scalar ``sum(losses)``; L-BFGS
  without one (``lbfgs(line_search=False)``) is an ordinary transformation (one evaluation per
  step). Either way the curvature memory (and the step length) is shared by the batch, so with
  L-BFGS images are NOT independent — batch them only when that is acceptable (style and texture
  use N = 1; ``style.style_transfer_batch`` uses Adam).
- ``parameterization``: how the optimised variables map to images (Lucid's ``param_f``):
  ``pixels()`` (default: the image itself) or ``jaxviz.param.fourier(...)`` (Fourier-space,
  decorrelated colour). ``parameterization(init) -> (params, image_f)``; every leaf of ``params``
  has the batch axis first.
- ``transforms``: ``Transform`` objects. ``stage="loss"`` ones are random augmentations applied to
  the image the objective sees (``jitter``: random roll, as in the CS231n class-visualisation
  homework, whose roll / step / unroll is exactly a loss on the rolled image); ``stage="update"``
  ones modify the image after an update, every ``every`` steps (``blur``, ``clip_range``,
  ``clip_small_norm``, ``clip_small_contribution``; Yosinski et al. 2015's regularisers).
- ``project(x, x0) -> x``: applied after every update (and after the update transforms), in image
  space; ``x0`` is ``init``. E.g. ``valid_range_projection(model)`` or an eps-ball projection.
- ``active(x) -> (N,) bool``: per-image "keep going", evaluated on the start and after every step
  inside the jitted step; an image that stops is frozen for good; the loop ends when none is
  active. ``steps_run[i]`` counts the updates image i received.
- ``callbacks``: ``Callback`` objects (``ProgressBar``, ``Snapshots``), called from the Python loop.
- ``key``: one PRNG key, shared by every image, or (N,) per-image keys (``jaxviz.keys.image_keys``).
  Image i's randomness depends on its own key only, so running it alone (with the same key, or
  ``keys[i:i+1]``) reproduces its batch result: batch[i] == single(i).
- ``data``: an optional pytree (network weights, targets, loss weights) handed to the jitted step
  as an argument. When given, ``loss_fn(x, keys, data)``, ``project(x, x0, data)`` and
  ``active(x, data)`` receive it as their last argument. Pass weights this way rather than
  closing over them: closed-over arrays are baked into the compiled program as constants (slow
  to compile: tens of seconds for VGG19), and a loss function defined once at module level with
  its arrays in ``data`` compiles once for every call with the same shapes (other weights,
  targets, loss weights or images reuse the compiled step).

The step (gradient, optimiser update, transforms, projection, mask, next ``active``) is jitted
for a given set of parts (cached: calling ``optimize`` again with the same loss/optimizer/transform
objects reuses the traced step; jit still specialises on shapes). One program call runs up to
``STEPS_PER_CALL`` steps in a ``lax.while_loop`` that ends early when no image is active; a Python
loop drives the calls, stopping where the callbacks ask for the images (``Callback.sync_every``)
and calling each callback once per step. Same images and losses as one call per step (tested);
faster, because every XLA-CPU call takes fresh memory pages for its temporary buffers (measured on
a 2-core EPYC: PGD batch 16 5.6-6.3 vs 7.1-7.6 s, class visualisation batch 4 2.5-3.2 vs
3.5-3.8 s, Gatys L-BFGS 30 steps 16.4-16.7 vs 19.1-19.6 s). No device-specific code: the same
call runs on CPU, GPU, TPU; ``compiler_options`` (a model's ``model.compiler_options``, set by the
front ends' ``jaxviz.accel.accelerate``) only tune XLA for it.

Examples
--------
PGD-L-inf, targeted (what ``jaxviz.adversarial`` does, images in [0, 1])::

    loss = lambda x, keys: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(params, model.preprocess(x)), target)          # (N,) target CE: minimise
    project = lambda x, x0: jnp.clip(jnp.clip(x, x0 - eps, x0 + eps), 0.0, 1.0)
    result = optimize(loss, images, optimizer=sign_gradient(eps / 4), steps=20, project=project,
                      active=lambda x: model.apply(params, model.preprocess(x)).argmax(-1) != target)

Gatys style with L-BFGS (model-input space)::

    loss = lambda x, keys: content_loss(x) + 1e3 * style_loss(x)   # (N,), here N = 1
    result = optimize(loss, content_x, optimizer=lbfgs(), steps=100,
                      project=valid_range_projection(vgg), compiler_options=vgg.compiler_options)

Class visualisation (model-input space)::

    from jaxviz import objectives as obj
    loss = -obj.class_score(model, params, classes) + 1e-3 * obj.l2()
    result = optimize(loss, jnp.zeros((n, 224, 224, 3)), optimizer=normalized_gradient(25.0),
                      steps=100, transforms=(jitter(16), blur(0.5, every=10),
                      clip_range(*valid_range(model))), key=jax.random.key(0),
                      compiler_options=model.compiler_options)
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError
from jaxviz.keys import image_keys  # noqa: F401 (re-exported)
from jaxviz.objectives import Objective
from jaxviz.targets import require_finite

Array = jax.Array
PyTree = Any
LossFn = Callable[[Array, Array], Array]
ProjectFn = Callable[[Array, Array], Array]
ActiveFn = Callable[[Array], Array]


# --------------------------------------------------------------------------------------------
# Parameterisation (pixels here; Fourier / decorrelated colour in jaxviz.param)

@dataclass(frozen=True)
class Parameterization:
    """Images as a function of optimised variables: ``encode(x) -> params``, ``image(params) -> x``.

    ``encode`` maps images (N, H, W, C) to params (every leaf batch-first); ``image`` is its
    (left) inverse. Calling it gives Lucid's pair: ``params, image_f = parameterization(init)``.
    """

    encode: Callable[[Array], PyTree]
    image: Callable[[PyTree], Array]
    name: str = "pixels"

    def __call__(self, init: Array) -> tuple[PyTree, Callable[[PyTree], Array]]:
        return self.encode(init), self.image


def _identity(x):
    return x


_PIXELS = Parameterization(_identity, _identity, "pixels")


def pixels() -> Parameterization:
    """The image is the variable (default)."""
    return _PIXELS


# --------------------------------------------------------------------------------------------
# Transforms

@dataclass(frozen=True)
class Transform:
    """``fn(x, keys, grad) -> x`` on (N, H, W, C) images with (N,) per-image keys.

    ``stage="loss"``: an augmentation of the image the objective sees (differentiated through).
    ``stage="update"``: applied to the image after an update when ``step % every == 0``;
    ``grad`` is the gradient of the loss w.r.t. the image (pixel parameterisation only, else None).
    """

    fn: Callable[[Array, Array, Array | None], Array]
    stage: Literal["loss", "update"]
    every: int = 1
    name: str = ""


def _cached(factory: Callable) -> Callable:
    """The same object for the same (hashable) arguments, so the engine's compiled step, cached by
    its parts' identities, is reused by a second call; arrays as arguments give a fresh object."""
    cached = functools.lru_cache(maxsize=64)(factory)

    @functools.wraps(factory)
    def make(*args, **kwargs):
        try:
            hash((args, tuple(kwargs.items())))
        except TypeError:
            return factory(*args, **kwargs)
        return cached(*args, **kwargs)
    return make


def _per_image(fn: Callable) -> Callable:
    """Lift ``fn(image (H, W, C), key) -> image`` to batches with per-image keys."""
    return jax.vmap(fn)


@_cached
def jitter(pixels: int) -> Transform:
    """Random roll of each image by up to ``pixels`` in y and x (the loss sees the rolled image).

    Rolling is circular, so no size change and no padding artefacts; the gradient of the rolled
    loss is the un-rolled gradient (CS231n's roll / step / unroll).
    """
    if pixels < 0:
        raise JaxvizError(f"jitter must be >= 0 pixels, got {pixels}")

    def one(img: Array, key: Array) -> Array:
        dy, dx = jax.random.randint(key, (2,), -pixels, pixels + 1)
        return jnp.roll(img, (dy, dx), axis=(0, 1))

    lifted = _per_image(one)
    return Transform(lambda x, keys, grad: lifted(x, keys), "loss", 1, f"jitter({pixels})")


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> np.ndarray:
    radius = int(np.ceil(3 * sigma)) if radius is None else radius
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x: Array, sigma: float) -> Array:
    """Separable Gaussian blur of (N, H, W, C) images per channel, reflect-padded edges."""
    if sigma <= 0:
        return x
    k = jnp.asarray(gaussian_kernel1d(sigma), x.dtype)
    r = (k.shape[0] - 1) // 2
    c = x.shape[-1]
    r = min(r, x.shape[1] - 1, x.shape[2] - 1)
    k = k[(k.shape[0] - 1) // 2 - r:(k.shape[0] - 1) // 2 + r + 1]
    k = k / k.sum()
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    dn = ("NHWC", "HWIO", "NHWC")
    ky = jnp.tile(k.reshape(-1, 1, 1, 1), (1, 1, 1, c))
    kx = jnp.tile(k.reshape(1, -1, 1, 1), (1, 1, 1, c))
    y = jax.lax.conv_general_dilated(xp, ky, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
    return jax.lax.conv_general_dilated(y, kx, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


@_cached
def blur(sigma: float, every: int = 1) -> Transform:
    """Gaussian blur of the image every ``every`` steps (Yosinski et al. 2015's blur regulariser)."""
    if sigma < 0 or every < 1:
        raise JaxvizError(f"blur needs sigma >= 0 and every >= 1 (got {sigma}, {every})")
    return Transform(lambda x, keys, grad: gaussian_blur(x, sigma), "update", every, f"blur({sigma}, {every})")


@_cached
def clip_range(lo: Array | float, hi: Array | float, every: int = 1) -> Transform:
    """Clip the image to [lo, hi] (per channel when given as (C,) arrays) after the update."""
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    return Transform(lambda x, keys, grad: jnp.clip(x, lo.astype(x.dtype), hi.astype(x.dtype)),
                     "update", every, "clip_range")


def _zero_below_quantile(x: Array, score: Array, q: float) -> Array:
    """Zero pixels (all channels) whose per-pixel ``score`` (N, H, W) is below its q-quantile."""
    n, h, w = score.shape
    k = int(q * h * w)
    # rank-based, so ties (e.g. many zero contributions behind a max-pool) still clip exactly k pixels
    rank = jnp.argsort(jnp.argsort(score.reshape(n, -1), axis=1), axis=1).reshape(n, h, w)
    return jnp.where((rank < k)[..., None], jnp.zeros((), x.dtype), x)


@_cached
def clip_small_norm(fraction: float, every: int = 1) -> Transform:
    """Set the ``fraction`` of pixels with the smallest channel-norm to 0 (Yosinski et al. 2015).

    0 in model-input space is the dataset mean colour for mean-subtracted preprocessing.
    """
    if not 0.0 <= fraction < 1.0:
        raise JaxvizError(f"clip_small_norm fraction must be in [0, 1), got {fraction}")
    return Transform(lambda x, keys, grad: _zero_below_quantile(x, jnp.linalg.norm(x, axis=-1), fraction),
                     "update", every, f"clip_small_norm({fraction})")


@_cached
def clip_small_contribution(fraction: float, every: int = 1) -> Transform:
    """Zero the ``fraction`` of pixels with the smallest |sum_c x * grad| (Yosinski et al. 2015's
    contribution clipping: a first-order estimate of how much the pixel moves the loss)."""
    if not 0.0 <= fraction < 1.0:
        raise JaxvizError(f"clip_small_contribution fraction must be in [0, 1), got {fraction}")

    def fn(x, keys, grad):
        if grad is None:
            raise JaxvizError("clip_small_contribution needs the pixel parameterisation")
        return _zero_below_quantile(x, jnp.abs((x * grad).sum(-1)), fraction)
    return Transform(fn, "update", every, f"clip_small_contribution({fraction})")


# --------------------------------------------------------------------------------------------
# Valid pixel range

def _preprocessing(model_or_preprocessing):
    """The ``Preprocessing`` of a model (``model.preprocessing``) or a ``Preprocessing`` itself."""
    return getattr(model_or_preprocessing, "preprocessing", model_or_preprocessing)


def valid_range(model_or_preprocessing: Any) -> tuple[Array, Array]:
    """(lo, hi), each (3,) in model channel order: the preprocessing of [0, 1] per channel.

    Accepts a ``jaxviz.interface.Model`` (its ``model.preprocessing``) or a ``Preprocessing``.
    """
    lo, hi = _preprocessing(model_or_preprocessing).valid_range()
    return jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)


def valid_range_projection(model_or_preprocessing: Any) -> ProjectFn:
    """``project(x, x0[, data]) -> x`` clipping model-input images to the preprocessing of [0, 1].

    The same object for the same preprocessing (so the engine's compiled step is reused)."""
    return _range_projection(_preprocessing(model_or_preprocessing))


@functools.lru_cache(maxsize=16)
def _range_projection(preprocessing) -> ProjectFn:
    lo, hi = (np.asarray(v, np.float32) for v in preprocessing.valid_range())  # numpy: no device arrays in a cache
    return lambda x, x0=None, data=None: jnp.clip(x, lo.astype(x.dtype), hi.astype(x.dtype))


# --------------------------------------------------------------------------------------------
# Optimisers (updates are added to the variables: they MINIMISE the loss)

@_cached
def sgd(learning_rate: float, momentum: float | None = None) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum)


@_cached
def adam(learning_rate: float, **kwargs) -> optax.GradientTransformation:
    return optax.adam(learning_rate, **kwargs)


def lbfgs(memory_size: int = 10, line_search: bool = True, learning_rate: float = 1.0,
          **kwargs) -> optax.GradientTransformationExtraArgs:
    """``optax.lbfgs``: with its zoom line search (default; see the module notes on batch
    coupling), or ``line_search=False``: a fixed step of ``learning_rate`` along the L-BFGS
    direction, one loss evaluation per step (torch ``LBFGS(max_iter=1)``'s rule). The first step
    is capped to a unit move: optax scales it by min(1, 1/||g||_2) over the whole batch (torch
    uses min(1, 1/|g|_1)); later steps use the usual <s, y>/<y, y> initial scaling."""
    if line_search:
        return optax.lbfgs(memory_size=memory_size, **kwargs)
    return optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size, linesearch=None, **kwargs)


@_cached
def sign_gradient(step: float) -> optax.GradientTransformation:
    """x <- x - step * sign(g): the L-inf steepest-descent step of FGSM / BIM / PGD."""
    return optax.chain(optax.scale_by_sign(), optax.scale(-step))


def _image_norms(tree: PyTree, kind: str) -> Array:
    """Per-image norm over all leaves (batch axis first): (N,)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if kind == "l2":
        return jnp.sqrt(sum(jnp.sum(jnp.square(l).reshape(l.shape[0], -1), 1) for l in leaves))
    total = sum(jnp.sum(jnp.abs(l).reshape(l.shape[0], -1), 1) for l in leaves)
    return total / sum(int(np.prod(l.shape[1:])) for l in leaves)


@_cached
def scale_by_image_norm(kind: Literal["l2", "mean_abs"] = "l2", eps: float = 1e-12) -> optax.GradientTransformation:
    """Divide each image's gradient by its own norm (L2, or mean |g| as DeepDream does)."""
    def update(updates, state, params=None):
        norms = _image_norms(updates, kind)
        return jax.tree_util.tree_map(
            lambda u: u / (norms.reshape((-1,) + (1,) * (u.ndim - 1)) + eps), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@_cached
def normalized_gradient(step: float, kind: Literal["l2", "mean_abs"] = "l2") -> optax.GradientTransformation:
    """x <- x - step * g / ||g|| per image (CS231n class visualisation, the seed "fooling" method;
    ``kind="mean_abs"``: g / mean|g|, DeepDream's normalised step)."""
    return optax.chain(scale_by_image_norm(kind), optax.scale(-step))


# --------------------------------------------------------------------------------------------
# Callbacks

class Callback:
    """Hooks called by the Python loop; override what you need.

    The engine runs up to ``STEPS_PER_CALL`` updates in one device program and calls ``step`` for
    each of them afterwards. ``sync_every``: the loop comes back to the host at least after every
    ``sync_every``-th update (and after the last one); ``images()`` is available at those updates
    only (elsewhere it raises ``JaxvizError``). The default, 1, gives the images after every update
    at the cost of one program call per update.
    """

    sync_every: int = 1

    def start(self, total: int, n: int) -> None:
        pass

    def step(self, i: int, losses: np.ndarray, active: np.ndarray, images: Callable[[], Array]) -> None:
        """After update ``i`` (0-based); ``losses`` (N,) were evaluated before it; ``active`` (N,):
        the images this update moved; ``images()`` is lazy."""

    def end(self) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar on stderr showing the mean loss of the active images every ``every`` steps."""

    def __init__(self, desc: str = "optimize", every: int = 10, disable: bool | None = None):
        self.desc, self.every, self.disable, self.bar = desc, every, disable, None

    @property
    def sync_every(self) -> int:  # the bar moves once per program call: at least every ``every`` steps
        return self.every

    def start(self, total: int, n: int) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, desc=self.desc, leave=False, disable=self.disable, unit="step")

    def step(self, i, losses, active, images):
        self.bar.update(1)
        if i % self.every == 0:
            self.bar.set_postfix(loss=f"{float(np.mean(np.asarray(losses))):.4g}",
                                 active=int(np.sum(np.asarray(active))))

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Snapshots(Callback):
    """Keeps ``(step, images)`` (numpy) after every ``every``-th update and after the last one."""

    def __init__(self, every: int, transform: Callable[[Array], Array] | None = None):
        self.every, self.transform, self.frames = every, transform, []
        self._last: tuple[int, Callable] | None = None

    @property
    def sync_every(self) -> int:  # the frames' updates are where the loop comes back to the host
        return self.every

    def start(self, total, n):
        self.frames = []

    def step(self, i, losses, active, images):
        self._last = (i + 1, images)
        if (i + 1) % self.every == 0:
            self._keep(i + 1, images)

    def _keep(self, i, images):
        x = images()
        self.frames.append((i, np.asarray(self.transform(x) if self.transform else x)))

    def end(self):
        # the last update a run ends on is a sync point; after an exception in another callback
        # (mid program call) the last images stayed on the device: no frame, the exception goes on
        if (self._last is not None and not isinstance(self._last[1], _NoImages)
                and (not self.frames or self.frames[-1][0] != self._last[0])):
            self._keep(*self._last)


# --------------------------------------------------------------------------------------------
# The engine

@dataclass
class OptimizeResult:
    """images: (N, H, W, C) final images; params: final variables; losses: (T, N) float32 loss
    before each update (T = updates run; float64 under ``jax_enable_x64``); steps_run: (N,)
    updates per image; seconds: wall time of the loop (compilation included); compile_seconds:
    tracing + compilation of the loop's program (milliseconds when it is already compiled)."""

    images: Array
    params: PyTree
    losses: np.ndarray
    steps_run: np.ndarray
    seconds: float = 0.0
    compile_seconds: float = 0.0
    extras: dict = field(default_factory=dict)


def require_concrete(technique: str, *trees: Any, pure: str = "") -> None:
    """One clear error for a technique driven by a host loop (the engine: early stopping, callbacks,
    reports) called under ``jax.jit`` / ``vmap`` / ``grad``: it takes a batch as it is. ``pure``
    names a jittable alternative."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees)):
        raise JaxvizError(f"{technique} runs a loop on the host (early stopping, progress, reports) and cannot run "
                          "under jax.jit, vmap or grad; call it outside them (it takes a batch)"
                          + (f", or use {pure}, which can" if pure else ""))


def uses_line_search(opt_state: PyTree) -> bool:
    """True for optax.lbfgs-like states that carry the value/grad for ``value_and_grad_from_state``."""
    try:
        return (optax.tree_utils.tree_get(opt_state, "value") is not None
                and optax.tree_utils.tree_get(opt_state, "grad") is not None)
    except KeyError:  # several matches: not a single line-search state
        return False


def _strong(tree: PyTree) -> PyTree:
    """Weak-typed leaves made strong. optax's L-BFGS initial state holds weak-typed scalars that
    its update returns strong: the jitted step would be traced and compiled a second time at its
    second call."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, a.dtype) if getattr(a, "weak_type", False) else a, tree)


def _check_line_search_dtype(params: PyTree) -> None:
    """optax's line search keeps its step sizes in float32 and fails deep inside a ``cond`` on
    lower-precision parameters: one clear error instead."""
    for leaf in jax.tree_util.tree_leaves(params):
        dtype = jnp.dtype(leaf.dtype)
        if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
            raise JaxvizError(f"an optimiser with a line search (L-BFGS) needs float32 or float64 images, got "
                              f"{dtype.name}: start from init.astype(jnp.float32), or use Adam")


def _check(init: Array, steps: int) -> None:
    if init.ndim < 2:
        raise JaxvizError(f"init must be a batch of images (N, H, W, C), got shape {init.shape}")
    if int(steps) < 0:
        raise JaxvizError(f"steps must be >= 0, got {steps}")
    # a NaN start pixel makes every loss and step NaN, yet the clipping transforms hand back
    # finite images: a result of nothing, silently
    require_finite("the starting images (init)", init)


# Updates per program call. Each XLA-CPU call takes fresh pages for its temporary buffers (the
# activations kept for the gradient: ~170 MB for SqueezeNet at batch 16, 224 px), so one call per
# update spent ~20% of PGD's time in page faults; a device loop of up to 32 updates per call was
# 10-25% faster for PGD, class visualisation and Gatys style on a 2-core EPYC, with the same images.
STEPS_PER_CALL = 32


@functools.lru_cache(maxsize=16)  # entries hold the callables' closures: keep few
def _compiled(loss_fn, optimizer, param, transforms, project, active, with_data, compiler_options=(),
              objective=False):
    """The jitted loop of steps for these parts, cached: a second call with the same objects
    (DeepDream's octaves, benchmarks, tests, attacks) reuses the traced program (jit still
    specialises on shapes).

    The step's ``data`` argument is ``(objective data, user data)``: with ``objective``,
    ``loss_fn`` is an ``Objective``'s pure ``fn(x, keys, objective_data)``."""
    image_f = param.image
    is_pixels = param.name == "pixels"
    loss_t = [t for t in transforms if t.stage == "loss"]
    update_t = [t for t in transforms if t.stage == "update"]
    opt = optax.with_extra_args_support(optimizer)
    extra = (lambda data: (data[1],)) if with_data else (lambda data: ())

    def loss_of(x, ks, data):
        return loss_fn(x, ks, data[0]) if objective else loss_fn(x, ks, *extra(data))

    # A line search evaluates the loss again inside its loop (optax's zoom: three traces of the
    # network per step). As one inner jit it is traced once and reused: a cached L-BFGS inversion
    # traced about 0.2 s less (0.99 -> 0.74-0.79 s). Elsewhere the extra jit only adds to the trace.
    loss_jit = jax.jit(loss_of)

    def objective_fn(p: PyTree, ks: Array, data: PyTree, line_search: bool = False) -> tuple[Array, Array]:
        x = image_f(p)
        for j, t in enumerate(loss_t):
            x = t.fn(x, jax.vmap(lambda k: jax.random.fold_in(k, 1 + j))(ks), None)
        losses = (loss_jit if line_search else loss_of)(x, ks, data)
        if line_search:  # optax's line search keeps its values in float32: a bfloat16 loss failed in its cond
            return losses.sum().astype(jnp.promote_types(losses.dtype, jnp.float32)), losses
        return losses.sum(), losses

    def step(p, state, mask, done, i, keys, x0, data):
        n = mask.shape[0]
        line_search = uses_line_search(state)
        ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        total = lambda q: objective_fn(q, ks, data, line_search)[0]  # deterministic within a step: what a line search needs
        if line_search:
            value, grad = optax.value_and_grad_from_state(total)(p, state=state)
            losses = objective_fn(p, ks, data, True)[1] if n > 1 else value.reshape(1)
        else:
            (value, losses), grad = jax.value_and_grad(objective_fn, has_aux=True)(p, ks, data)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=total)
        new = optax.apply_updates(p, updates)
        if update_t or project is not None:
            x = image_f(new)
            for j, t in enumerate(update_t):
                tk = jax.vmap(lambda k: jax.random.fold_in(k, 101 + j))(ks)
                g = grad if is_pixels else None
                x = jax.lax.cond(i % t.every == 0, lambda z: t.fn(z, tk, g).astype(z.dtype), lambda z: z, x)
            if project is not None:
                x = project(x, x0, *extra(data))
            new = param.encode(x)
        new = jax.tree_util.tree_map(
            lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, p)
        done = done + mask.astype(jnp.int32)
        if active is not None:
            mask = mask & jnp.asarray(active(image_f(new), *extra(data)), bool).reshape(n)
        return new, state, mask, done, losses

    def run(p, state, mask, done, first, count, keys, x0, data):
        """``count`` (<= STEPS_PER_CALL) steps from step ``first`` in one program, ending early
        when no image is active; returns the losses and active masks of each step run."""
        # float32 (float64 under jax_enable_x64): no second trace of the step to learn its dtype
        losses = jnp.zeros((STEPS_PER_CALL,) + mask.shape, jax.dtypes.canonicalize_dtype(jnp.float64))
        actives = jnp.zeros((STEPS_PER_CALL,) + mask.shape, bool)

        def going(carry):
            j, mask = carry[0], carry[3]
            return (j < count) & (jnp.any(mask) if active is not None else True)

        def body(carry):
            j, p, state, mask, done, losses, actives = carry
            actives = actives.at[j].set(mask)
            new_p, new_state, mask, done, step_losses = step(p, state, mask, done, first + j, keys, x0, data)
            # a loop's carry keeps its dtypes: the images and the optimiser's state stay in theirs
            # (e.g. a float32 projection of bfloat16 images, a state that an update promotes)
            p, state = jax.tree_util.tree_map(_same_dtype, (new_p, new_state), (p, state))
            step_losses = step_losses.reshape(mask.shape).astype(losses.dtype)
            return j + 1, p, state, mask, done, losses.at[j].set(step_losses), actives

        carry = (jnp.int32(0), p, state, mask, done, losses, actives)
        ran, p, state, mask, done, losses, actives = jax.lax.while_loop(going, body, carry)
        return p, state, mask, done, losses, actives, ran

    active_jit = None if active is None else jax.jit(lambda x, data: active(x, *extra(data)))
    options = {"compiler_options": dict(compiler_options)} if compiler_options else {}
    # the optimiser's state built by one program (eagerly, each of its leaves was a small one)
    init_jit = jax.jit(lambda p: _strong(opt.init(p)))
    images_jit = image_f if image_f is _identity else jax.jit(image_f)  # pixels: no program to run
    return jax.jit(run, **options), images_jit, active_jit, (opt, init_jit)


def optimize(loss_fn: LossFn, init: Array, *, optimizer: optax.GradientTransformation, steps: int,
             parameterization: Parameterization | None = None, transforms: Sequence[Transform] = (),
             project: ProjectFn | None = None, active: ActiveFn | None = None,
             callbacks: Sequence[Callback] = (), key: Array | None = None,
             data: PyTree | None = None, compiler_options: tuple[tuple[str, str], ...] = ()) -> OptimizeResult:
    """Minimise ``loss_fn`` over a batch of images; see the module docstring for the contract.

    Args:
      loss_fn: ``(x (N, H, W, C), keys (N,)) -> (N,)`` losses to minimise.
      init: (N, H, W, C) starting images (also the ``x0`` given to ``project``); the images and
        the optimiser's state keep their dtypes through the updates.
      optimizer: an optax transformation (L-BFGS detected from its state).
      steps: maximum number of updates.
      parameterization: ``pixels()`` (default) or e.g. ``jaxviz.param.fourier(...)``.
      transforms: ``Transform``s (loss-stage augmentations, update-stage regularisers).
      project: ``(x, x0) -> x`` after every update.
      active: ``x -> (N,) bool`` per-image continue flag (frozen for good once False).
      callbacks: ``Callback``s driven from the loop.
      key: one PRNG key shared by every image, or (N,) per-image keys (default: key 0).
      data: optional pytree passed to ``loss_fn`` / ``project`` / ``active`` as a traced last
        argument (weights and targets: compiled once, not baked in as constants).
      compiler_options: XLA options for the step, ``model.compiler_options`` (set by
        ``jaxviz.accel.accelerate``: faster convolutions on CPU for some networks; same results).
    Returns:
      ``OptimizeResult``.
    Raises:
      JaxvizError: ``init`` not a batch of images or not finite, ``steps`` < 0, traced arguments,
        or a line-search optimiser (L-BFGS) with images below float32 (bfloat16, float16).
    """
    require_concrete("the optimisation engine", init, data)
    init = jnp.asarray(init)
    _check(init, steps)
    n = init.shape[0]
    keys = image_keys(key, n)
    param = parameterization or pixels()
    # a copy, never aliasing the caller's arrays; device_put copies without compiling a program
    # per shape as jnp.array does
    params = jax.tree_util.tree_map(lambda a: jax.device_put(a, may_alias=False), param.encode(init))
    if n == 0:  # no images: nothing to run (and losses that reshape to (N, -1) cannot trace)
        return empty_result(init, params)
    # An Objective travels as its pure function (the cache key) and its arrays (traced data).
    objective = isinstance(loss_fn, Objective)
    loss_key, loss_data = (loss_fn.pure_fn, loss_fn.data) if objective else (loss_fn, None)
    data = (loss_data, data)
    parts = (loss_key, optimizer, param, tuple(transforms), project, active, data[1] is not None,
             tuple(compiler_options), objective)
    try:
        run_jit, images_jit, active_jit, (opt, opt_init) = _compiled(*parts)
    except TypeError:  # something unhashable: build without the cache
        run_jit, images_jit, active_jit, (opt, opt_init) = _compiled.__wrapped__(*parts)
    try:
        opt_state = opt_init(params)
    except TypeError:  # a custom optimiser whose state holds what jit cannot return (strings, ...)
        opt_state = _strong(opt.init(params))
    if steps > 0 and uses_line_search(opt_state):
        _check_line_search_dtype(params)
    # Host arrays placed with device_put: jnp.ones / jnp.zeros, and jnp.asarray of a numpy array,
    # would each compile a small program per shape.
    mask = jax.device_put(np.ones((n,), bool))
    if active is not None:
        mask = jnp.asarray(active_jit(images_jit(params), data), bool).reshape(n)
    done = jax.device_put(np.zeros((n,), np.int32))
    history = []
    syncs = [_sync_every(cb) for cb in callbacks]
    for cb in callbacks:
        cb.start(int(steps), n)
    start = time.perf_counter()
    compile_seconds = 0.0
    i, steps = 0, int(steps)
    try:
        while i < steps:
            if active is not None and not bool(mask.any()):
                break
            end = min([steps, i + STEPS_PER_CALL] + [(i // s + 1) * s for s in syncs])
            args = (params, opt_state, mask, done, np.int32(i), np.int32(end - i), keys, init, data)  # no program
            if i == 0:  # compiled ahead of the call, so the compile time is its own
                run_jit.lower(*args).compile()
                compile_seconds = time.perf_counter() - start
            params, opt_state, mask, done, losses, actives, ran = run_jit(*args)
            ran = int(ran)
            losses, actives = np.asarray(losses)[:ran], np.asarray(actives)[:ran]
            history.append(losses)
            for k in range(ran):
                last = k == ran - 1
                for cb in callbacks:
                    cb.step(i + k, losses[k], actives[k],
                            (lambda p=params: images_jit(p)) if last else _NoImages(i + k))
            i += ran  # fewer than asked: no image is active any more, and the check above ends the loop
    finally:
        for cb in callbacks:
            cb.end()
    images = images_jit(params)
    jax.block_until_ready(images)
    seconds = time.perf_counter() - start
    losses = (np.concatenate(history) if history
              else np.zeros((0, n), jax.dtypes.canonicalize_dtype(jnp.float64)))
    return OptimizeResult(images, params, losses, np.asarray(done), seconds, compile_seconds)


def empty_result(init: Array, params: PyTree | None = None) -> OptimizeResult:
    """The result of optimising no images: ``init`` (0, H, W, C) back, no losses, no steps."""
    losses = np.zeros((0, 0), jax.dtypes.canonicalize_dtype(jnp.float64))
    return OptimizeResult(jnp.array(init), init if params is None else params, losses, np.zeros((0,), np.int32))


def _sync_every(callback) -> int:
    every = getattr(callback, "sync_every", 1)
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise JaxvizError(f"a callback's sync_every must be an integer >= 1, got {every!r}")
    return int(every)


class _NoImages:
    """``images`` of an update inside a program call: the images stayed on the device."""

    def __init__(self, i: int):
        self.i = i

    def __call__(self) -> Array:
        raise JaxvizError(f"the images after update {self.i} stayed on the device (several updates run "
                          "in one program call); set the callback's sync_every to get them")


def _same_dtype(new: Array, old: Array) -> Array:
    return new if new.dtype == old.dtype else new.astype(old.dtype)
