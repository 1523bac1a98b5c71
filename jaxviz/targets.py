"""What to explain or maximise: a class score or a neuron, turned into one scalar per image.

A target is a class (index or name; default the predicted class) scored as the logit (default),
softmax probability or log-probability, or a neuron ``LAYER:CHANNEL[:Y:X]`` of a named layer (no
position: the channel's spatial mean). Like pytorch-grad-cam's ``ClassifierOutputTarget``, every
kind of target is one idea: a function of the network's output, so techniques need not care.
The class/channel index may be traced (one per image), so a batch of targets vmaps and jits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, PyTree, as_model
from jaxviz.interface.model import class_index, take_class
from jaxviz.labels import resolve_class

Array = jax.Array
ScoreKind = Literal["logit", "prob", "logprob"]
SCORE_KINDS = ("logit", "prob", "logprob")


@dataclass(frozen=True)
class Target:
    """A class target (``layer`` None) or a neuron target; ``index`` None = predicted class."""

    index: int | None = None
    layer: str | None = None
    y: int | None = None
    x: int | None = None
    score: ScoreKind = "logit"

    def __post_init__(self) -> None:
        # a Target is static configuration: refuse values that would be truncated or misread later
        if self.score not in SCORE_KINDS:
            raise JaxvizError(f"unknown score {self.score!r}; use one of {', '.join(SCORE_KINDS)}")
        for name in ("index", "y", "x"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, jax.core.Tracer) and (
                    isinstance(value, (bool, str, bytes)) or jnp.ndim(value) != 0
                    or float(value) != int(value)):
                raise JaxvizError(f"Target {name} must be a whole number, got {value!r}")
            if value is not None and not isinstance(value, jax.core.Tracer):
                object.__setattr__(self, name, int(value))  # 3.0 or np.int64(3): a Python int (static, hashable)

    @property
    def is_class(self) -> bool:
        return self.layer is None

    def describe(self, labels: tuple[str, ...] | None = None) -> str:
        if self.is_class:
            if self.index is None:
                return f"predicted class ({self.score})"
            name = f" {labels[self.index]}" if labels else ""
            return f"class {self.index}{name} ({self.score})"
        where = f" at ({self.y}, {self.x})" if self.y is not None else " (spatial mean)"
        return f"{self.layer} channel {self.index}{where}"


ATTRIBUTION_ARGS = """
    Common arguments (the attribution functions share them):
      model: a ``jaxviz.Model`` (a bundled network, ``from_linen`` / ``from_nnx`` / ``from_apply_fn``)
        or a bare ``apply_fn(params, x) -> logits``; static under ``jit``.
      params: the model's parameters (None: ``model.params``).
      x: (N, H, W, 3) preprocessed NHWC images (``model.preprocess`` of RGB in [0, 1]), floating
        point.
      target: None (each image's predicted class), a class index (negative: from the end) or a
        ``jaxviz.Target`` (a class and its score kind, or a neuron: layer, channel, position).
      index: (N,) classes or channels, one per image (a batch of targets; may be traced), replacing
        the target's; a concrete one must agree with a class or channel the target names.

    Raises:
      JaxvizError: images not (N, H, W, 3) floating point or not finite; a class or channel out of
        range or not a whole number; an unknown layer; a bad option (its registry bounds).
"""


def attribution_doc(paper: str) -> Callable[[Callable], Callable]:
    """Append the paper and the shared arguments to an attribution function's docstring (one text
    for every function, so ``help()`` shows all of it)."""
    def decorate(fn):
        fn.__doc__ = f"{fn.__doc__.rstrip()}\n\n    Method: {paper}.\n{ATTRIBUTION_ARGS}"
        return fn
    return decorate


def check_images(x: Array) -> None:
    """Refuse anything but a batch of preprocessed NHWC RGB images (N, H, W, 3), floating point
    and, when concrete, finite (an NCHW batch would otherwise reach the network and fail inside it
    with the framework's own error)."""
    if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
        raise JaxvizError(f"images must be (N, H, W, 3) preprocessed, got shape {getattr(x, 'shape', None)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):  # e.g. uint8 pixels: JAX cannot differentiate them
        raise JaxvizError(f"images must be floating point (preprocessed: model.preprocess(images in [0, 1])), "
                          f"got {x.dtype}")
    # a NaN pixel makes the scores NaN, yet some gradients stay finite: a map of nothing
    require_finite("images", x)


def require_finite(what: str, x: Array) -> None:
    """Refuse a concrete array holding NaN or inf, checked on the host (no program); a traced
    one passes (the caller's business).

    Raises:
      JaxvizError: "{what} contain NaN or infinite values".
    """
    if not isinstance(x, jax.core.Tracer) and not np.isfinite(np.asarray(x)).all():
        raise JaxvizError(f"{what} contain NaN or infinite values")


def parse_target(text: str | int | None, model: ModelLike, score: ScoreKind = "logit") -> Target:
    """Parse ``None`` | ``"285"`` | ``"Egyptian cat"`` | ``"features.12:17"`` | ``"fire9:17:3:4"``.

    ``model`` is a ``jaxviz.interface.Model``. Class names are looked up in ``model.labels``;
    layer names are resolved (aliases allowed) and channels/positions checked against the layer's
    shape at the model's input size, so mistakes fail here with a clear message.

    Raises:
      JaxvizError: an unknown class, layer, channel or position, or a malformed target.
    """
    model = as_model(model)
    if score not in SCORE_KINDS:
        raise JaxvizError(f"unknown score {score!r}; use one of {', '.join(SCORE_KINDS)}")
    if text is None or str(text).strip() in ("", "predicted"):
        return Target(score=score)
    parts = str(text).split(":")
    if len(parts) == 1:
        if model.num_classes is None:
            raise JaxvizError(f"model {model.name} has no classifier: give a target as LAYER:CHANNEL")
        return Target(index=resolve_class(parts[0], model.num_classes, model.labels), score=score)
    if len(parts) not in (2, 4):
        raise JaxvizError(f"target {text!r} must be CLASS, LAYER:CHANNEL or LAYER:CHANNEL:Y:X")
    layer = model.resolve_layer(parts[0])
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise JaxvizError(f"target {text!r}: channel and position must be integers") from None
    shape = model.layer_shapes()[layer]
    channel = numbers[0]
    if not 0 <= channel < shape[-1]:
        raise JaxvizError(f"channel {channel} out of range for {layer} (0..{shape[-1] - 1})")
    y = x = None
    if len(numbers) == 3:
        if len(shape) != 3:
            raise JaxvizError(f"layer {layer} has no spatial positions (shape {shape})")
        y, x = numbers[1:]
        if not (0 <= y < shape[0] and 0 <= x < shape[1]):
            raise JaxvizError(f"position ({y}, {x}) outside {layer}'s {shape[0]}x{shape[1]} map")
    return Target(index=channel, layer=layer, y=y, x=x)


def as_target(target: "Target | int | None", index: Array | None = None) -> "Target":
    """None -> predicted class; int -> that class; a Target as is. ``index``: the technique's
    per-image classes or channels, which replace the target's (a batch of targets under ``vmap``
    or ``jit``); given concretely beside a target that names another class or channel, one of
    the two would be ignored silently, so that is refused.

    Raises:
      JaxvizError: a class name or another type (``jaxviz.labels.resolve_class`` turns a name
        into its index); a concrete ``index`` that differs from the target's own class/channel.
    """
    if target is None:
        target = Target()
    elif not isinstance(target, Target):
        if isinstance(target, (str, bytes)) or jnp.ndim(target) != 0:
            raise JaxvizError(f"target must be a class index, a jaxviz.Target or None, got {target!r}; "
                              "jaxviz.labels.resolve_class(name) gives a class name's index")
        target = Target(index=target)  # Target refuses a fractional index and keeps a Python int
    if (index is not None and target.index is not None and not isinstance(index, jax.core.Tracer)
            and np.any(np.asarray(index) != target.index)):  # on the host: no program
        what = "class" if target.is_class else f"{target.layer} channel"
        raise JaxvizError(f"the target names {what} {target.index} but index= gives {np.asarray(index).tolist()}: "
                          "give one of them (index= with target=None, or a Target without an index, for a batch)")
    return target


def class_scores(logits: Array, index: Array, score: ScoreKind = "logit") -> Array:
    """(N, classes) logits, (N,) class indices -> (N,) scores of the chosen kind."""
    if score == "prob":
        logits = jax.nn.softmax(logits, axis=-1)
    elif score == "logprob":
        logits = jax.nn.log_softmax(logits, axis=-1)
    return take_class(logits, index)


def class_scores_of(model: ModelLike, params: PyTree, x: Array, index: Array | None = None,
                    score: ScoreKind = "logit", *,
                    inject: dict[str, Array] | None = None) -> tuple[Array, Array]:
    """((N,) scores, (N,) int32 classes) of preprocessed ``x`` (N, H, W, 3) for classes ``index``
    (None: each image's predicted class, held fixed: no gradient through the choice), with
    layers' outputs replaced as in ``Model.run(inject=)``.

    Logits come from ``model.selected_logits``, which computes only the selected classes where
    the model knows its head (a gradient then skips the other classes' weights); probabilities
    need every logit.

    Raises:
      JaxvizError: a model without class logits (a feature extractor).
    """
    model = as_model(model)
    if score == "logit":
        return model.selected_logits(params, x, index, inject=inject)
    logits = model.logits(params, x, inject=inject)
    index = class_index(index, logits.shape[0], logits, logits.shape[-1])
    return class_scores(logits, index, score), index


def neuron_scores(acts: Array, index: Array, y: int | None = None, x: int | None = None) -> Array:
    """(N, H, W, C) or (N, C) activations, (N,) channels -> (N,) unit value or channel mean.

    Raises ``JaxvizError`` for an empty map or a position outside it (shapes are static, so
    this holds under ``jit`` too; JAX would otherwise clamp the index silently).
    """
    if acts.ndim == 4:
        h, w = acts.shape[1:3]
        if h * w == 0:
            raise JaxvizError(f"the target layer's map is empty ({h}x{w}) at this input size; use a larger input")
        if y is not None and not (0 <= y < h and 0 <= x < w):
            raise JaxvizError(f"position ({y}, {x}) outside the target layer's {h}x{w} map at this input size")
        acts = acts[:, y, x, :] if y is not None else acts.mean(axis=(1, 2))
    return take_class(acts, index)


def scores_of(model: ModelLike, params: PyTree, x: Array, target: Target, index: Array | None = None) -> Array:
    """(N,) scores of preprocessed ``x`` for ``target`` (see ``score_fn``)."""
    return score_fn(model, target)(params, x, index)


def check_target_index(target: Target, count: int | None) -> None:
    """Refuse a Target whose own index (a static Python number) is out of range: ``count`` classes
    (None: unknown, unchecked) or channels of its layer. Checked where the scores are computed, so
    also under ``jit``, where the (N,) index built from it is traced and would only give NaN."""
    if target.index is None or isinstance(target.index, jax.core.Tracer) or not count:
        return
    if not -count <= target.index < count:
        what = f"class index {target.index}" if target.is_class else f"channel {target.index} of {target.layer}"
        raise JaxvizError(f"{what} is out of range for {count} {'classes' if target.is_class else 'channels'} "
                          f"(0..{count - 1}, or negative from the end)")


def score_fn(model: ModelLike, target: Target) -> Callable[[dict, Array, Array | None], Array]:
    """``f(params, x, index=None) -> (N,)`` scores of preprocessed images ``x`` (N, H, W, 3).

    ``model`` is a ``jaxviz.interface.Model`` (or an ``apply_fn`` for class targets).
    ``index`` (N,) overrides the target's class/channel per image (vmappable batch of targets);
    with neither, a class target uses each image's predicted class (held fixed, no gradient).
    """
    model = as_model(model)

    def f(params: dict, x: Array, index: Array | None = None) -> Array:
        n = x.shape[0]
        if index is None and target.index is not None:
            index = jnp.full((n,), target.index, jnp.int32)
        if target.is_class:
            check_target_index(target, model.num_classes)
            return class_scores_of(model, params, x, index, target.score)[0]
        acts = model.activation(params, x, target.layer)
        check_target_index(target, acts.shape[-1])
        return neuron_scores(acts, jnp.asarray(index), target.y, target.x)
    return f
