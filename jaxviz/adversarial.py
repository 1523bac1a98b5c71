"""Adversarial examples: the seed's normalised-gradient "fooling" method, FGSM, I-FGSM/BIM and PGD.

Methods (``METHODS`` is the registry the CLI and the gallery are built from):

- ``seed``: x <- x + eta * g / ||g||_2 with g the gradient of the *target* class logit, repeated
  until the prediction becomes the target (the CS231n "fooling images" homework; Szegedy et al.
  2014, "Intriguing properties of neural networks"). Untargeted: step *down* the true class logit.
- ``fgsm``: one step x + eps * sign(grad CE) (Goodfellow et al. 2015, "Explaining and harnessing
  adversarial examples"); ``gradient_sign`` is its direction, one gradient for any eps.
- ``ifgsm``: iterated FGSM / BIM, clipped to the eps-ball after every step (Kurakin et al. 2017,
  "Adversarial examples in the physical world").
- ``pgd-linf`` / ``pgd-l2``: projected gradient descent on the cross-entropy with a random start
  in the ball (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks").

Conventions:
- Images are RGB in [0, 1], NHWC, *not* preprocessed: the model's preprocessing runs inside the
  loss, so the valid-range constraint is an exact clip and eps, step sizes and the reported L2 /
  L-inf norms are in pixel units of the [0, 1] range (eps = 8/255 is "8 grey levels").
- Targeted attacks minimise the cross-entropy of the target (the seed method: maximise its logit);
  untargeted attacks maximise the cross-entropy of the reference label (default: the model's
  prediction on the original image).
- Success is never a flag carried through the loop (Foolbox #674): ``assess`` re-predicts the final
  range-clipped image, and with ``quantize=True`` (default) the returned images are on the 8-bit
  grid (so a saved PNG is exactly what was assessed), inside the budget; if rounding undid the
  attack, a few more steps are run and the image is rounded and re-checked again.
- Iterative attacks are one call of the image-optimisation engine: a loss, an optax transform
  (sign step for L-inf, per-image normalised step for L2 and the seed method), ``project``
  (eps-ball intersected with [0, 1]) and ``active`` (per-image stop). Weights, classes and budgets
  travel as the engine's ``data``, so a second attack on the same model reuses the compiled step.
- ``model`` is a ``jaxviz.interface.Model`` (any adapter) or a bare ``apply_fn(params, x) ->
  logits``: attacks need no layer. Its declared preprocessing runs inside the loss. Speed devices
  (a faster max-pool backward, XLA options) come from the front ends applying
  ``jaxviz.accel.accelerate(model)`` once; here only ``model.compiler_options`` is read.
- Randomness: the random start of image i comes from its own key (one key is shared by every
  image, or (N,) keys), so a batch equals its images attacked one by one.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.interface.model import class_index, host_indices, take_class
from jaxviz.keys import image_keys
from jaxviz.optimize import require_concrete

Array = jax.Array
Norm = Literal["linf", "l2"]
ProbaFn = Callable[[Array], Array]  # (N, H, W, 3) images in [0, 1] -> (N, classes) probabilities


# --------------------------------------------------------------------------------------------
# The registry of methods (drives the CLI help, defaults and the gallery)

@dataclass(frozen=True)
class Method:
    """One attack: its geometry, step rule, loss and defaults (eps and step in [0, 1] pixel units)."""

    name: str
    help: str
    norm: Norm
    step_rule: Literal["sign", "normalized"]
    loss: Literal["ce", "logit"]
    iterative: bool = True
    random_start: bool = False
    eps: float | None = None        # ball radius / norm budget; None = unbounded (seed method)
    step: float | None = None       # None: eps / step_fraction
    step_fraction: float = 4.0
    steps: int = 20
    early_stop: bool = True         # stop each image once it succeeds

    def default_step(self, eps: float | None) -> float:
        if self.step is not None:
            return self.step
        if eps is None:
            raise JaxvizError(f"method {self.name} needs --step when no --eps is given")
        return eps / self.step_fraction


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("seed", "x <- x + eta*g/||g||_2 on the target logit until the prediction is the target "
           "(CS231n fooling images); --eps is an optional L2 budget", norm="l2",
           step_rule="normalized", loss="logit", step=0.1, steps=200),
    Method("fgsm", "fast gradient sign method, one step of eps (Goodfellow et al. 2015)", norm="linf",
           step_rule="sign", loss="ce", iterative=False, eps=4 / 255, steps=1, early_stop=False),
    Method("ifgsm", "iterative FGSM / BIM, step eps/4, clipped to the eps-ball (Kurakin et al. 2017)",
           norm="linf", step_rule="sign", loss="ce", eps=4 / 255, steps=20),
    Method("pgd-linf", "PGD in the L-inf ball with random start, step eps/4 (Madry et al. 2018)",
           norm="linf", step_rule="sign", loss="ce", random_start=True, eps=4 / 255, steps=20),
    Method("pgd-l2", "PGD in the L2 ball with random start, step eps/5 (Madry et al. 2018)",
           norm="l2", step_rule="normalized", loss="ce", random_start=True, eps=1.0,
           step_fraction=5.0, steps=20),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise JaxvizError(f"unknown attack method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))?\s*$")


def parse_amount(text: str | float, what: str = "eps") -> float:
    """A positive pixel-unit amount from ``"0.03"``, ``"8/255"`` or a number.

    Raises:
      JaxvizError: not a number or fraction, division by zero, not positive or not finite.
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _FRACTION.match(str(text))
        if not match and _FRACTION.match(str(text).strip().lstrip("-")):
            raise JaxvizError(f"bad {what} {text!r}: must be a positive finite number")
        if not match:
            raise JaxvizError(f"bad {what} {text!r}: expected a number or a fraction such as 8/255")
        num, den = float(match.group(1)), float(match.group(2) or 1.0)
        if den == 0:
            raise JaxvizError(f"bad {what} {text!r}: division by zero")
        value = num / den
    if not np.isfinite(value) or value <= 0:
        raise JaxvizError(f"bad {what} {text!r}: must be a positive finite number")
    return value


# --------------------------------------------------------------------------------------------
# Reports (re-predicted, reusable by any attack including black-box ones)

@dataclass(frozen=True)
class AttackReport:
    """Per-image outcome of an attack, measured on the final images (arrays of shape (N,)).

    ``target`` is -1 for untargeted attacks; ``label`` is the reference class (the true class or
    the model's prediction on the original). Norms are of (adversarial - original) in [0, 1]
    pixel units. ``queries`` is for query-based attacks (None for white-box ones).
    """

    method: str
    model: str
    success: np.ndarray
    steps: np.ndarray
    label: np.ndarray
    label_confidence: np.ndarray     # p(label | original)
    target: np.ndarray
    final_class: np.ndarray
    final_confidence: np.ndarray     # p(final_class | adversarial)
    target_confidence: np.ndarray    # p(target | adversarial) (targeted) / p(label | adversarial)
    l2: np.ndarray
    linf: np.ndarray
    eps: float | None = None
    norm: str | None = None
    confidence: float | None = None
    queries: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def targeted(self) -> bool:
        return bool((self.target >= 0).any())

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if len(self.success) else 0.0

    def __len__(self) -> int:
        return len(self.success)

    def records(self, labels: Sequence[str] | None = None) -> list[dict]:
        """One JSON-ready dict per image (class names from ``labels`` when given)."""
        def cls(i: int) -> dict:
            return {"index": int(i), "label": labels[int(i)] if labels is not None and i >= 0 else None}
        rows = []
        for i in range(len(self)):
            row = {"model": self.model, "method": self.method, "success": bool(self.success[i]),
                   "steps": int(self.steps[i]),
                   "original": {**cls(self.label[i]), "confidence": float(self.label_confidence[i])},
                   "target": cls(self.target[i]) if self.target[i] >= 0 else None,
                   "final": {**cls(self.final_class[i]), "confidence": float(self.final_confidence[i])},
                   "l2": float(self.l2[i]), "linf": float(self.linf[i]),
                   "linf_255": float(self.linf[i] * 255)}
            if self.target[i] >= 0:
                row["target"]["confidence"] = float(self.target_confidence[i])
            if self.queries is not None:
                row["queries"] = int(self.queries[i])
            rows.append(row)
        return rows


@dataclass(frozen=True)
class AttackResult:
    """``images``: adversarial images (N, H, W, 3) in [0, 1] (on the 8-bit grid unless
    quantize=False); ``report``: an ``AttackReport`` from re-predicting them (success per image,
    classes and confidences before and after, perturbation norms, steps run)."""

    images: np.ndarray
    report: AttackReport


def perturbation_norms(originals: Array, adversarial: Array) -> tuple[np.ndarray, np.ndarray]:
    """(L2, L-inf) per image of adversarial - originals, (N, H, W, 3) -> two (N,) arrays.

    Computed in float64 from the arrays given, so norms of 8-bit images are exact multiples.
    """
    d = np.asarray(adversarial, np.float64) - np.asarray(originals, np.float64)
    d = d.reshape(d.shape[0], -1)
    return np.sqrt((d ** 2).sum(1)), np.abs(d).max(1, initial=0.0)


def succeeded(probs: Array, label: Array, target: Array, confidence: float | None = None) -> Array:
    """(N,) bool: targeted (target >= 0): argmax == target; untargeted: argmax != label; and,
    with ``confidence``, the winning class's probability >= confidence."""
    top = jnp.argmax(probs, axis=-1)
    ok = jnp.where(target >= 0, top == target, top != label)
    if confidence is not None:
        ok = ok & (jnp.max(probs, axis=-1) >= confidence)
    return ok


_succeeded_jit = jax.jit(succeeded, static_argnames="confidence")


def _succeeded(probs, label, target, confidence: float | None) -> Array:
    """``succeeded`` outside a trace, as one program (``confidence`` a Python float: static)."""
    return _succeeded_jit(probs, label, target, None if confidence is None else float(confidence))


def assess(predict_proba: ProbaFn, originals: Array, adversarial: Array, *, label: Array,
           target: Array | None = None, confidence: float | None = None, steps: Array | None = None,
           method: str = "", model: str = "", eps: float | None = None, norm: str | None = None,
           queries: Array | None = None, original_probs: Array | None = None) -> AttackReport:
    """Re-predict originals and adversarial images and measure the attack (the only success test).

    Args:
      predict_proba: ``f(images01 (N, H, W, 3)) -> (N, classes)`` probabilities (any model).
      originals, adversarial: (N, H, W, 3) in [0, 1].
      label: (N,) reference classes; target: (N,) targets or None / -1 (untargeted).
      original_probs: ``predict_proba(originals)`` when the caller already has it (one pass less).
    """
    n = len(originals)
    label = np.asarray(label, np.int32).reshape(n)
    target = np.full(n, -1, np.int32) if target is None else np.broadcast_to(np.asarray(target, np.int32), (n,))
    p0 = np.asarray(predict_proba(jnp.asarray(originals, jnp.float32)) if original_probs is None else original_probs)
    p1 = np.asarray(predict_proba(jnp.asarray(adversarial, jnp.float32)))
    ok = np.asarray(_succeeded(p1, label, target, confidence))
    final = p1.argmax(-1)
    rows = np.arange(n)
    l2, linf = perturbation_norms(originals, adversarial)
    return AttackReport(
        method=method, model=model, success=ok, label=label, target=target,
        steps=np.zeros(n, np.int32) if steps is None else np.asarray(steps, np.int32).reshape(n),
        label_confidence=p0[rows, label], final_class=final.astype(np.int32),
        final_confidence=p1[rows, final], target_confidence=p1[rows, np.where(target >= 0, target, label)],
        l2=l2, linf=linf, eps=eps, norm=norm, confidence=confidence,
        queries=None if queries is None else np.asarray(queries))


def _jit(fn: Callable, model, **kwargs) -> Callable:
    """``jax.jit`` with the model's XLA options (``model.compiler_options``; none by default)."""
    if model.compiler_options:
        kwargs["compiler_options"] = dict(model.compiler_options)
    return jax.jit(fn, **kwargs)


@functools.lru_cache(maxsize=16)
def _proba_jit(model) -> Callable:
    return _jit(lambda params, images: jax.nn.softmax(model.apply(params, model.preprocess(images)), axis=-1),
                model)


def proba_fn(model: ModelLike, params: dict | None = None) -> ProbaFn:
    """``predict_proba(images01) -> probs`` of a model (jitted once per model): its declared
    preprocessing, then softmax of its logits. ``model``: a ``Model`` or a bare ``apply_fn``
    (then ``params`` are needed)."""
    model = as_model(model)
    params = model.resolve_params(params)
    run = _proba_jit(model)
    return lambda images: run(params, jnp.asarray(images, jnp.float32))


# --------------------------------------------------------------------------------------------
# Losses, steps and projections (small parts, freely recombined)

def _one_of(what: str, value, allowed: tuple) -> None:
    """A misspelt name is an error, not silently the other choice."""
    if value not in allowed:
        raise JaxvizError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def attack_loss(logits: Array, cls: Array, *, targeted: bool, kind: str = "ce") -> Array:
    """(N, classes) logits -> (N,) losses to MINIMISE.

    ``ce``: targeted CE(target), untargeted -CE(label); ``logit`` (seed): targeted -logit[target],
    untargeted +logit[label].

    Raises:
      JaxvizError: an unknown ``kind``.
    """
    _one_of("loss", kind, ("ce", "logit"))
    # take_class: a traced class out of range gives NaN losses and gradients (a NaN-filled
    # gather alone differentiates to 0: the images would come back unchanged)
    if kind == "ce":
        value = -take_class(jax.nn.log_softmax(logits, -1), cls)
        return value if targeted else -value
    value = take_class(logits, cls)
    return -value if targeted else value


def _per_image_norm(x: Array) -> Array:
    """(N, ...) -> (N, 1, ..., 1) L2 norms, broadcastable against x."""
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def step_rule(rule: str, step: float | Array) -> optax.GradientTransformation:
    """The attack's optax optimiser: a descent step of ``step`` pixels, L-inf for "sign"
    (x - step * sign(g)), L2 per image for "normalized" (x - step * g / ||g||_2); ``step`` may be
    traced (``projected_gradient_descent``).

    Raises:
      JaxvizError: an unknown ``rule``.
    """
    from jaxviz.optimize import normalized_gradient, sign_gradient
    _one_of("step rule", rule, ("sign", "normalized"))
    return sign_gradient(step) if rule == "sign" else normalized_gradient(step)


@functools.lru_cache(maxsize=32)  # the same object for the same step: the engine's step cache hits
def step_transform(rule: str, step: float) -> optax.GradientTransformation:
    """``step_rule`` for the engine (a Python float step), cached."""
    return step_rule(rule, step)


def project(x: Array, x0: Array, *, norm: Norm, eps: float | None) -> Array:
    """Into the eps-ball around x0 (L-inf clip or L2 radial shrink), then into [0, 1].

    Clipping to [0, 1] after the ball keeps the point in the ball (x0 lies in the box, and the
    clip moves every coordinate towards it), so the result is in ball ∩ box.

    Raises:
      JaxvizError: an unknown ``norm``.
    """
    _one_of("norm", norm, ("linf", "l2"))
    if eps is not None:
        d = x - x0
        if norm == "linf":
            d = jnp.clip(d, -eps, eps)
        else:
            d = d * jnp.minimum(1.0, eps / jnp.maximum(_per_image_norm(d), 1e-12))
        x = x0 + d
    return jnp.clip(x, 0.0, 1.0)


def random_init(key: Array | None, x0: Array, *, norm: Norm, eps: float) -> Array:
    """A random start in the eps-ball around x0, clipped to [0, 1]: uniform in the L-inf ball; in
    the L2 ball a uniform direction at radius eps*u, u uniform in [0, 1] (torchattacks' rule; NOT
    uniform in volume, which would put almost every point near the surface in high dimension).

    ``key`` is one key (shared by every image: image i's start depends on its key only) or (N,)
    keys, one per image (``jaxviz.keys.image_keys``).

    Raises:
      JaxvizError: an unknown ``norm``.
    """
    _one_of("norm", norm, ("linf", "l2"))
    return _random_init(key, x0, norm=norm, eps=eps)


@functools.partial(jax.jit, static_argnames="norm")  # one program, not a dozen eager ones
def _random_init(key: Array | None, x0: Array, *, norm: Norm, eps: float) -> Array:
    keys = image_keys(key, x0.shape[0])

    def one(k, x):
        if norm == "linf":
            return jax.random.uniform(k, x.shape, x.dtype, -eps, eps)
        kd, kr = jax.random.split(k)
        d = jax.random.normal(kd, x.shape, x.dtype)
        return d / jnp.maximum(jnp.linalg.norm(d), 1e-12) * eps * jax.random.uniform(kr, (), x.dtype)
    return jnp.clip(x0 + jax.vmap(one)(keys, x0), 0.0, 1.0)


# k / 255 as float32, exactly as an 8-bit PNG decodes (XLA may turn a division into a product
# with the reciprocal, which is off by one ulp for some k).
_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _level_values(levels: Array) -> Array:
    """Integer-valued float levels (any range) -> the float32 pixel values of the 8-bit grid."""
    return jnp.asarray(_LEVELS)[jnp.clip(levels, 0, 255).astype(jnp.int32)]


def quantize_8bit(x: Array, x0: Array, *, norm: Norm, eps: float | None) -> Array:
    """The 8-bit image nearest to x that stays in the budget (exact for 8-bit originals x0; for
    originals off the 8-bit grid, L-inf may exceed eps by up to 1/1000 of a grey level, 4e-6, the
    tolerance that keeps float rounding from dropping a level that is inside).

    L-inf: round, then clip to the grid levels inside [x0 - eps, x0 + eps]. L2: round, and for
    images whose rounded perturbation leaves the ball, round every pixel towards x0 instead
    (|q - x0| <= |x - x0| per pixel, so the norm cannot grow).
    """
    return _quantize_8bit(x, x0, jnp.float32(0.0) if eps is None else eps, norm=norm, bounded=eps is not None)


@functools.partial(jax.jit, static_argnames=("norm", "bounded"))  # one program, not ~30 eager ones
def _quantize_8bit(x: Array, x0: Array, eps: Array, *, norm: Norm, bounded: bool) -> Array:
    eps = eps if bounded else None  # a traced eps (a scalar or per-image array): one program for every value
    x, x0 = jnp.asarray(x, jnp.float32), jnp.asarray(x0, jnp.float32)
    q = jnp.round(x * 255.0)
    if eps is not None and norm == "linf":
        lo = jnp.ceil((x0 - eps) * 255.0 - 1e-3)
        hi = jnp.floor((x0 + eps) * 255.0 + 1e-3)
        q = jnp.clip(q, lo, hi)
    q = _level_values(q)
    if eps is not None and norm == "l2":
        # Rounding a perturbation of many sub-level pixels can grow its norm: shrink it by the
        # largest factor s whose rounding fits; last resort, round every pixel towards x0.
        def rounded(s):
            return _level_values(jnp.round((x0 + s * (x - x0)) * 255.0))
        fits = lambda z: _per_image_norm(z - x0) <= eps * (1 + 1e-6)
        towards = jnp.where(x >= x0, jnp.floor(x * 255.0 + 1e-3), jnp.ceil(x * 255.0 - 1e-3))
        best = _level_values(towards)
        for s in np.linspace(0.5, 1.0, 11):  # ascending: the last fitting (largest) s wins
            candidate = rounded(float(s))
            best = jnp.where(fits(candidate), candidate, best)
        q = jnp.where(fits(q), q, best)
    return q


# --------------------------------------------------------------------------------------------
# The attacks

@functools.lru_cache(maxsize=32)
def _engine_parts(model, targeted: bool, kind: str, norm: Norm, bounded: bool, early_stop: bool,
                  budgeted: bool, confident: bool, fixed_mask: bool):
    """``(loss, project, active)`` for the engine with every array (weights, classes, originals,
    budgets) in its ``data`` argument: cached per model and configuration, so a second attack
    call reuses the compiled step instead of compiling one with the weights baked in."""
    def loss(x: Array, keys: Array | None, data: dict) -> Array:
        # preprocess inside the loss: the variable is the [0, 1] image, so clipping is exact
        return attack_loss(model.apply(data["params"], model.preprocess(x)), data["cls"], targeted=targeted, kind=kind)

    def project_fn(x: Array, engine_x0: Array, data: dict) -> Array:
        # the ball is centred on the ORIGINAL images, not on the (random) start the engine saw
        return project(x, data["x0"], norm=norm, eps=data["eps"] if bounded else None)

    def active(x: Array, data: dict) -> Array:
        """Not yet successful (if early_stop) and, with an L2 budget (seed method), the next step
        (L2 length ``step``) cannot take the perturbation past it."""
        if fixed_mask:
            return data["mask"]
        go = jnp.ones(x.shape[0], bool)
        if early_stop:
            probs = jax.nn.softmax(model.apply(data["params"], model.preprocess(x)), axis=-1)
            go = go & ~succeeded(probs, data["label"], data["target"], data["confidence"] if confident else None)
        if budgeted:
            go = go & (_per_image_norm(x - data["x0"]).reshape(-1) + data["step"] <= data["budget"] * (1 + 1e-6))
        return go
    return loss, project_fn, (active if (early_stop or budgeted or fixed_mask) else None)


def _loss_fn(model, params: dict, cls: Array, targeted: bool, kind: str) -> Callable:
    """``loss(x) -> (N,)``: the attack loss of the engine parts with these weights and classes."""
    loss = _engine_parts(model, targeted, kind, "linf", False, False, False, False, False)[0]
    return lambda x, key=None: loss(x, key, {"params": params, "cls": cls})


@functools.lru_cache(maxsize=32)
def _loss_grad(model, targeted: bool, kind: str) -> Callable:
    """``grad(params, x, cls) -> (N, H, W, 3)``, jitted once per model and configuration."""
    loss = _engine_parts(model, targeted, kind, "linf", False, False, False, False, False)[0]
    # grad of the summed batch loss = per-image gradients (images are independent, eval mode)
    return _jit(lambda params, x, cls: jax.grad(lambda z: loss(z, None, {"params": params, "cls": cls}).sum())(x),
                model)


def _images01(images) -> Array:
    """(N, H, W, 3) images in [0, 1] as float32, or one clear error for another shape or, when
    concrete (not traced), values outside [0, 1]: the attacks clip to [0, 1], so preprocessed
    input would come back far outside its eps-ball."""
    if not isinstance(images, jax.core.Tracer):
        values = np.asarray(images, np.float32)
        if values.ndim == 4 and values.size and not (values.min() >= 0.0 and values.max() <= 1.0):
            raise JaxvizError(f"images must be RGB in [0, 1] (before the model's preprocessing), got values "
                              f"{values.min():.4g}..{values.max():.4g}")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise JaxvizError(f"images must be (N, H, W, 3) in [0, 1], got shape {tuple(images.shape)}")
    return images


def gradient_sign(model: ModelLike, params: dict | None, images: Array, cls: Array, *, targeted: bool = False) -> Array:
    """FGSM's step direction, (N, H, W, 3) in {-1, 0, 1}: sign(grad_x CE(label)) (untargeted: up the
    label's cross-entropy) or -sign(grad_x CE(target)) (targeted: down the target's).

    One gradient serves every eps: ``fgsm(..., eps=e) == clip(images + e * gradient_sign(...), 0, 1)``
    (an eps sweep costs one backward pass). Arguments as for ``fgsm``.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    images = _images01(images)
    # a concrete class out of range: an error (its gradient would be 0: the images unchanged)
    cls = class_index(cls, images.shape[0], num_classes=model.num_classes)
    # the gradient of the loss to MINIMISE (-CE(label), or CE(target)): step against it
    return -jnp.sign(_loss_grad(model, bool(targeted), "ce")(params, images, cls))


def fgsm(model: ModelLike, params: dict | None, images: Array, cls: Array, *, eps: float,
         targeted: bool = False) -> Array:
    """Fast gradient sign method: clip(x + eps * sign(grad CE(label))) (untargeted) or
    clip(x - eps * sign(grad CE(target))) (targeted).

    Args:
      model: a ``Model`` or a bare ``apply_fn``; params: its parameters (None: ``model.params``).
      images: (N, H, W, 3) in [0, 1]. cls: (N,) labels (untargeted) or targets (targeted).
    Returns:
      (N, H, W, 3) adversarial images in [0, 1] (float; not quantised).
    Raises:
      JaxvizError: eps not a finite number in (0, 1], a class out of range, wrong shapes,
        concrete images outside [0, 1] (or NaN).
    """
    from jaxviz.techniques import check  # (the registry imports this module)
    check("fgsm", eps=eps)
    images = jnp.asarray(images, jnp.float32)
    return jnp.clip(images + eps * gradient_sign(model, params, images, cls, targeted=targeted), 0.0, 1.0)


def projected_gradient_descent(model: ModelLike, params: dict | None, images: Array, cls: Array, *, eps: float | Array,
                               step: float | Array | None = None, steps: int = 20, norm: Norm = "linf",
                               targeted: bool = False, random_start: bool = True,
                               key: Array | None = None) -> Array:
    """PGD (Madry et al. 2018; without random start: BIM / I-FGSM, Kurakin et al. 2017) as one pure
    function: a fixed number of steps in a ``lax.fori_loop``, no early stopping, no 8-bit rounding,
    no report, so that it runs inside ``jax.jit``, ``jax.vmap`` (over images, eps or keys) and a
    jitted training step (adversarial training). ``attack(method="pgd-linf" | "pgd-l2" | "ifgsm",
    early_stop=False, quantize=False)`` runs the same steps through the host loop, with a report.

    Args:
      model: a ``Model`` or a bare ``apply_fn``; params: its parameters (None: ``model.params``).
      images: (N, H, W, 3) RGB in [0, 1]. cls: (N,) labels (untargeted) or targets (targeted),
        negative from the end (traced: unchecked; out of range the images come back NaN).
      eps: radius of the L-inf or L2 ball around ``images``, pixel units: a scalar (may be traced).
      step: step size (sign step for L-inf, L2 length for L2); None: eps / 4 (L-inf), eps / 5 (L2).
      steps: number of steps (a Python int: the loop's length).
      norm: ``"linf"`` (sign steps) or ``"l2"`` (normalised-gradient steps).
      targeted: descend the target's cross-entropy instead of ascending the label's.
      random_start: start at a uniform point of the ball (``random_init``); False: at the images.
      key: one PRNG key (shared by every image) or (N,) per-image keys (default key 0).
    Returns:
      (N, H, W, 3) adversarial images in [0, 1] inside the eps-ball (float; not quantised).
    Raises:
      JaxvizError: an unknown norm, steps not a whole number in 1..100000, a concrete eps / step / steps
        outside the attack's bounds (``jaxviz.techniques``), wrong shapes, a concrete class out of range,
        concrete images outside [0, 1] (or NaN).
    """
    _one_of("norm", norm, ("linf", "l2"))
    spec = get_method(f"pgd-{norm}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise JaxvizError(f"steps must be a whole number >= 1 (the loop's length, static), got {steps!r}")
    from jaxviz.techniques import TECHNIQUES  # (the registry imports this module)
    technique = TECHNIQUES[spec.name]  # the attack's bounds for what is concrete (traced values: a sweep)
    given = {k: v for k, v in dict(eps=eps, step=step, steps=steps).items()
             if v is not None and not isinstance(v, jax.core.Tracer) and any(o.name == k for o in technique.options)}
    technique.check(**given)
    model = as_model(model)
    params = model.prepare_params(model.resolve_params(params))
    x0 = _images01(images)
    cls = class_index(cls, x0.shape[0], num_classes=model.num_classes)
    step = spec.default_step(eps) if step is None else step
    opt = step_rule(spec.step_rule, step)  # the host loop's optimiser, uncached: step may be traced
    loss = _engine_parts(model, bool(targeted), "ce", norm, True, False, False, False, False)[0]
    data = {"params": params, "cls": cls}
    grad = jax.grad(lambda x: loss(x, None, data).sum())  # images independent: per-image gradients
    x = random_init(jax.random.key(0) if key is None else key, x0, norm=norm, eps=eps) if random_start else x0

    def one_step(_, carry):
        x, state = carry
        updates, state = opt.update(grad(x), state, x)
        return project(optax.apply_updates(x, updates), x0, norm=norm, eps=eps), state
    return jax.lax.fori_loop(0, int(steps), one_step, (x, opt.init(x)))[0]


def _run_iterations(model, parts, init, *, optimizer, steps, data):
    """One call of the shared engine: (images, steps_run per image, timing of the loop)."""
    from jaxviz.optimize import optimize
    loss_fn, project_fn, active_fn = parts
    result = optimize(loss_fn, init, optimizer=optimizer, steps=steps, project=project_fn, active=active_fn,
                      data=data, compiler_options=model.compiler_options)
    timing = dict(seconds=result.seconds, compile_seconds=result.compile_seconds, updates=len(result.losses))
    return result.images, np.asarray(result.steps_run), timing


def _attack_data(params, cls, x0, eps, label, tgt, confidence, step, budget) -> dict:
    f32 = lambda v: jnp.float32(0.0 if v is None else v)
    return {"params": params, "cls": cls, "x0": x0, "eps": f32(eps), "label": label, "target": tgt,
            "confidence": f32(confidence), "step": f32(step), "budget": f32(budget)}


def attack(model: ModelLike, params: dict | None, images: Array, *, method: str = "pgd-linf",
           target: int | Array | None = None, label: Array | None = None, eps: float | None = None,
           step: float | None = None, steps: int | None = None, confidence: float | None = None,
           early_stop: bool | None = None, random_start: bool | None = None,
           key: Array | None = None, quantize: bool = True, refine_steps: int = 5,
           refine_rounds: int = 3) -> AttackResult:
    """Run one of ``METHODS`` on a batch and report it from a re-prediction of the final images.

    Args:
      model: a ``Model`` or a bare ``apply_fn``; params: its parameters (None: ``model.params``).
      images: (N, H, W, 3) RGB in [0, 1] (8-bit images for exact 8-bit results).
      method: a key of ``METHODS``.
      target: class index (all images) or (N,) indices: targeted; None: untargeted.
      label: (N,) reference classes (default: the model's predictions on ``images``).
      eps: ball radius (L-inf or L2, pixel units; seed: optional L2 budget); None: the default.
      step: step size in pixel units (sign step for L-inf, L2 length otherwise); steps: max steps.
      confidence: success also needs the winning class probability >= confidence.
      early_stop: stop each image once it succeeds (default: the method's; PGD/BIM stop too).
      random_start: start at a random point of the ball (default: the method's).
      key: one PRNG key (shared by every image) or (N,) per-image keys, for the random start.
      quantize: return 8-bit images (round inside the budget, re-check, refine if undone).
      refine_steps, refine_rounds: extra steps per round for images whose rounding undid success.
    Returns:
      ``AttackResult(images, report)``.
    Raises:
      JaxvizError: unknown method, bad eps/step/steps/confidence, wrong shapes, images outside
        [0, 1] (or NaN).
    """
    require_concrete("attack", params, images, label, target, key, pure="projected_gradient_descent")
    spec = get_method(method)
    from jaxviz.techniques import TECHNIQUES
    technique = TECHNIQUES[spec.name]  # eps/step/steps/confidence checked once, in the registry
    given = dict(eps=eps, step=step, steps=steps, confidence=confidence)
    technique.check(**{k: v for k, v in given.items() if any(o.name == k for o in technique.options)})
    model = as_model(model)
    params = model.resolve_params(params)
    x0 = _images01(images)
    n = x0.shape[0]
    eps = spec.eps if eps is None else float(eps)
    step = spec.default_step(eps) if step is None else float(step)
    steps = spec.steps if steps is None else int(steps)
    early_stop = spec.early_stop if early_stop is None else early_stop
    params = model.prepare_params(params)
    predict = proba_fn(model, params)
    p0 = predict(x0)  # the label, the class count and the report's original confidences
    if p0.ndim != 2:
        raise JaxvizError(f"{model.name} is not a classifier: its output has shape {tuple(p0.shape[1:])} per image")
    num_classes = p0.shape[1]
    # concrete class indices, checked on the host and placed once (no small programs)
    # whole numbers (1.5 was truncated to class 1), negative from the end as in attribution
    label = host_indices(np.asarray(p0).argmax(-1) if label is None else label, num_classes, "label", "classes")
    targeted = target is not None
    tgt = host_indices(target, num_classes, "target class", "classes") if targeted else np.full((n,), -1, np.int32)
    for name, values in (("label", label), ("target", tgt)):
        if values.size not in (1, n):
            raise JaxvizError(f"{name} must be one class or ({n},) classes, got shape {values.shape}")
    label, tgt = np.broadcast_to(label, (n,)), np.broadcast_to(tgt, (n,))
    label, tgt = jax.device_put(label), jax.device_put(np.array(tgt))
    cls = tgt if targeted else label

    engine_times: dict = {}
    if not spec.iterative:
        adv = fgsm(model, params, x0, cls, eps=eps, targeted=targeted)
        steps_run = np.ones(n, np.int32)
    else:
        use_random = spec.random_start if random_start is None else random_start
        init = x0
        if use_random and eps is not None:
            key = jax.random.key(0) if key is None else key
            init = random_init(key, x0, norm=spec.norm, eps=eps)
        budget = eps if spec.name == "seed" else None
        parts = _engine_parts(model, targeted, spec.loss, spec.norm, eps is not None, bool(early_stop),
                              budget is not None, confidence is not None, False)
        data = _attack_data(params, cls, x0, eps, label, tgt, confidence, step, budget)
        adv, steps_run, engine_times = _run_iterations(
            model, parts, init, optimizer=step_transform(spec.step_rule, step), steps=steps, data=data)
        if early_stop:  # an image that already meets the goal needs no step: the original, not a random start
            done = np.asarray(_succeeded(p0, label, tgt, confidence))
            if done.any():
                adv = jnp.where(jnp.asarray(done)[:, None, None, None], x0, adv)
                steps_run = np.where(done, 0, np.asarray(steps_run))

    if quantize:
        adv, steps_run = _quantize_and_refine(
            model, params, predict, adv, x0, label, tgt, confidence, spec, eps, step, steps_run,
            refine_steps, refine_rounds, targeted)
    else:
        adv = jnp.clip(adv, 0.0, 1.0)
    adv = np.asarray(adv, np.float32)
    report = assess(predict, x0, adv, label=label, target=tgt, confidence=confidence, steps=steps_run,
                    method=spec.name, model=model.name, eps=eps, norm=spec.norm, original_probs=p0)
    report.extra.update(engine=engine_times)
    return AttackResult(adv, report)


def _quantize_and_refine(model, params, predict, adv, x0, label, tgt, confidence, spec, eps, step,
                         steps_run, refine_steps, refine_rounds, targeted):
    """Round to 8 bits inside the budget; where rounding undid a success, step on and re-round."""
    steps_run = np.asarray(steps_run, np.int32).copy()
    float_ok = np.asarray(_succeeded(predict(adv), label, tgt, confidence))
    q = quantize_8bit(adv, x0, norm=spec.norm, eps=eps)
    cls = tgt if targeted else label
    for _ in range(refine_rounds if spec.iterative else 0):
        undone = float_ok & ~np.asarray(_succeeded(predict(q), label, tgt, confidence))
        if not undone.any():
            break
        mask = jnp.asarray(undone)
        # fixed extra steps (no early stop) push past the decision boundary, away from rounding
        parts = _engine_parts(model, targeted, spec.loss, spec.norm, eps is not None, False, False, False, True)
        data = {**_attack_data(params, cls, x0, eps, label, tgt, confidence, step, None), "mask": mask}
        more, _, _ = _run_iterations(model, parts, adv, optimizer=step_transform(spec.step_rule, step),
                                     steps=refine_steps, data=data)
        steps_run += refine_steps * undone
        adv = jnp.where(mask[:, None, None, None], more, adv)
        q = jnp.where(mask[:, None, None, None], quantize_8bit(more, x0, norm=spec.norm, eps=eps), q)
    return q, steps_run


def fooling_images(model: ModelLike, params: dict | None, images: Array, target: int | Array, **kwargs) -> AttackResult:
    """The seed homework's method (``method="seed"``): normalised target-logit ascent until the
    prediction is the target. Keyword arguments as for ``attack``."""
    return attack(model, params, images, method="seed", target=target, **kwargs)


def ifgsm(model: ModelLike, params: dict | None, images: Array, **kwargs) -> AttackResult:
    """Iterative FGSM / BIM (Kurakin et al. 2017, "Adversarial examples in the physical world"):
    ``attack(model, params, images, method="ifgsm", **kwargs)``.

    ``kwargs`` are ``attack``'s: ``target`` (None: untargeted), ``label``, ``eps`` and ``step``
    (pixel units of [0, 1] images), ``steps``, ``confidence``, ``early_stop``, ``key``,
    ``quantize``. Images (N, H, W, 3) in [0, 1]; returns ``AttackResult(images, report)``.

    Raises:
      JaxvizError: as ``attack``.
    """
    return attack(model, params, images, method="ifgsm", **kwargs)


def pgd(model: ModelLike, params: dict | None, images: Array, *, norm: Norm = "linf", **kwargs) -> AttackResult:
    """Projected gradient descent with a random start in the L-inf or L2 ball (Madry et al. 2018,
    "Towards deep learning models resistant to adversarial attacks"):
    ``attack(model, params, images, method="pgd-linf" | "pgd-l2", **kwargs)``.

    ``kwargs`` are ``attack``'s: ``target`` (None: untargeted), ``label``, ``eps`` (ball radius)
    and ``step`` (pixel units of [0, 1] images), ``steps``, ``confidence``, ``early_stop``,
    ``random_start``, ``key``, ``quantize``. Images (N, H, W, 3) in [0, 1]; returns
    ``AttackResult(images, report)``. The pure, jittable form is ``projected_gradient_descent``.

    Raises:
      JaxvizError: a norm other than linf / l2, or as ``attack``.
    """
    _one_of("norm", norm, ("linf", "l2"))
    return attack(model, params, images, method=f"pgd-{norm}", **kwargs)


# --------------------------------------------------------------------------------------------
# Transferability and rendering

def transfer_report(adversarial: Array, originals: Array, model_b: ModelLike, params_b: dict | None = None, *,
                    target: Array | None = None, label: Array | None = None,
                    confidence: float | None = None, source: AttackReport | None = None) -> AttackReport:
    """Evaluate adversarial images crafted on another model on ``model_b`` (black-box transfer).

    Untargeted success on B means B's prediction moved away from ``label`` (default: B's own
    prediction on the original); targeted, that B predicts the target. Images are resized
    (bicubic) to B's declared input size when it differs. ``source`` copies method/steps/eps from the
    white-box report.
    """
    model_b = as_model(model_b)
    params_b = model_b.params if params_b is None else params_b
    size = model_b.input_hw()
    adversarial, originals = np.asarray(adversarial, np.float32), np.asarray(originals, np.float32)
    if model_b.input_size is not None and adversarial.shape[1:3] != size:
        from jaxviz.images import fit_image
        # the images are already the model's crops: resize them as they are (no second eval crop)
        adversarial = np.stack([fit_image(a, size, "stretch") for a in adversarial])
        originals = np.stack([fit_image(a, size, "stretch") for a in originals])
    predict = proba_fn(model_b, params_b)
    if label is None:
        label = np.asarray(predict(originals)).argmax(-1)
    if target is None and source is not None and source.targeted:
        target = source.target
    return assess(predict, originals, adversarial, label=label, target=target, confidence=confidence,
                  steps=None if source is None else source.steps,
                  method=f"{source.method} from {source.model}" if source else "transfer",
                  model=model_b.name, eps=None if source is None else source.eps,
                  norm=None if source is None else source.norm)


def difference_image(original: np.ndarray, adversarial: np.ndarray, magnify: float = 10.0) -> np.ndarray:
    """(…, H, W, 3) -> 0.5 + magnify * (adversarial - original), clipped to [0, 1] (grey = no change)."""
    d = np.asarray(adversarial, np.float32) - np.asarray(original, np.float32)
    return np.clip(0.5 + magnify * d, 0.0, 1.0)


def triplet(original: np.ndarray, adversarial: np.ndarray, magnify: float = 10.0, pad: int = 2) -> np.ndarray:
    """(H, W, 3) original | adversarial | magnified difference, side by side, in [0, 1]."""
    from jaxviz.render import grid
    return grid([original, adversarial, difference_image(original, adversarial, magnify)], columns=3, pad=pad)
