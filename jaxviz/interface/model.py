"""The model interface: everything a technique may ask of a model, whoever wrote it.

A ``Model`` wraps a network and its variables (``model.params``) and answers, as pure, jittable
functions of ``(params, x)`` on preprocessed NHWC images ``x`` (N, H, W, 3):

- ``apply(params, x)``: the output (logits (N, classes) for a classifier);
- ``activations(params, x, layers)`` / ``activation(params, x, layer)``: named layers' outputs,
  running the network only as far as the last of them;
- ``run(params, x, capture=, inject=)``: both at once, with the outputs of named layers REPLACED
  by given arrays (``inject={layer: a}``), so the gradient with respect to any layer is one
  ``jax.grad`` over ``a``; under ``jit``, work that only fed a replaced layer is dead code;
- ``with_backward("guided" | "deconv")``: the same network whose ReLU/ReLU6 backward rule is
  replaced (``jaxviz.interface.backward``), for guided backprop and the deconvnet;
- ``selected_logits(params, x, index, inject=)``: one class's logit per image, which a model that
  knows its classifier head may compute without the other classes (the bundled networks);

and declares its facts: ``preprocessing`` (pixel range, mean/std, channel order: hence the valid
pixel box), ``eval_transform`` (how a photograph becomes an input), ``input_size``,
``num_classes`` and ``labels``, layer names and shapes, aliases, the
default feature layer, and where known each layer's receptive field and the per-layer structure
that incremental occlusion uses.

Adapters build one from a plain ``apply_fn(params, x)`` (no named layers), a ``flax.linen``
module and its variables (layers = module paths, ``"block1/conv"``), a ``flax.nnx`` module (layers
= attribute paths, ``"block1.conv"``); the bundled networks are linen models with more facts.
A model is hashable by identity, so it can be a static argument of ``jax.jit``.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, ParamShapeError
from jaxviz.interface.backward import RULES, Rule, with_backward_rule
from jaxviz.interface.geometry import ReceptiveField
from jaxviz.interface.preprocessing import IDENTITY, TORCHVISION_EVAL, EvalTransform, Preprocessing

Array = jax.Array
PyTree = Any
ALL = "*"  # capture every layer (for listing names and shapes)
_PROBE = 224  # probe size for models that declare no input size


# How jax's shape rules open the TypeError they raise when a layer meets an input its parameters do
# not fit (a flatten-dense head at another image size, a conv given other channels).
_SHAPE_RULE = re.compile(r"dot_general requires contracting dimensions|conv_general_dilated |"
                         r"\S+ got incompatible shapes|Incompatible shapes for broadcasting|cannot reshape array")


def size_error(model: "Model", x: Array, error: Exception, inject: Mapping | None = None) -> ParamShapeError | None:
    """The ``ParamShapeError`` naming the fix for jax's shape error raised by a user's module on
    ``x`` (NHWC) at a size other than its declared one, or None for any other error (re-raised as
    it is: a shape bug at the declared size, or arrays injected with the wrong shape)."""
    text = str(error).splitlines()[0].rstrip(".") if str(error) else ""
    if not isinstance(error, TypeError) or not _SHAPE_RULE.match(text) or inject:
        return None
    if model.input_size is not None and tuple(x.shape[1:3]) == model.input_hw():
        return None
    return ParamShapeError(
        f"{model.name} does not run on {x.shape[1]}x{x.shape[2]}x{x.shape[3]} inputs ({text}): if a layer's "
        "parameters depend on the input size (a flatten-dense head), give the size it was built for "
        "(input_size= when wrapping it, or size=)")


def class_index(index: Array | int | None, n: int, logits: Array | None = None,
                num_classes: int | None = None, *, positive: bool = False) -> Array:
    """(n,) int32 classes: ``index`` broadcast, or for None the argmax of ``logits`` (N, classes),
    held fixed (no gradient through the choice).

    A concrete ``index`` (Python or numpy integers, a concrete array) must lie in
    ``-num_classes .. num_classes - 1`` (negative: from the end, as numpy indexing). A traced one
    cannot be checked: out of range, its score and its gradients are NaN (``take_class``), never
    another class.
    ``positive``: negative classes in range returned as ``0 .. num_classes - 1`` (for callers
    whose indexing does not count from the end; a traced one out of range stays out of range).

    Raises:
      JaxvizError: a concrete index out of range, or not integer.
    """
    if index is None:
        index = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
    elif num_classes is not None and not isinstance(index, jax.core.Tracer):
        values = _integers(index)
        if values.size and (values.min() < -num_classes or values.max() >= num_classes):
            bad = values[(values < -num_classes) | (values >= num_classes)].ravel()[0]
            raise JaxvizError(f"class index {bad} is out of range for {num_classes} classes "
                              f"(0..{num_classes - 1}, or negative from the end)")
        if positive:  # on the host: no program for it
            index = np.where(values < 0, values + num_classes, values)
    elif num_classes is not None and positive:
        index = jnp.where((index < 0) & (index >= -num_classes), index + num_classes, index)
    return _broadcast_index(index, n)


def per_image_index(index: Array | int, n: int) -> Array:
    """(n,) int32 classes or channels from one index or n of them; a concrete one must be whole
    numbers (1.5 would be truncated to class 1 by the int32 cast).

    Raises:
      JaxvizError: a concrete fractional index, or a shape other than () / (1,) / (n,).
    """
    if not isinstance(index, jax.core.Tracer):
        _integers(index)
    return _broadcast_index(index, n)


def layer_tuple(layers: str | Sequence[str]) -> tuple[str, ...]:
    """Layer names as a tuple: one name given as a string is one layer (not its characters)."""
    return (layers,) if isinstance(layers, str) else tuple(layers)


def host_indices(index: int | Sequence[int] | np.ndarray, count: int, noun: str = "class index", plural: str = "classes") -> np.ndarray:
    """A concrete index or list of indices as (n,) int32 numpy values in 0..count-1, for the
    techniques that take their classes or channels on the host (one image each). Whole numbers in
    -count..count-1, negative counted from the end as in ``class_index`` and numpy indexing.

    Raises:
      JaxvizError: a fractional or non-numeric index, one out of range, or more than one axis.
    """
    values = np.atleast_1d(_integers(index, f"{noun.split()[0]} indices"))
    if values.ndim != 1:
        raise JaxvizError(f"give one {noun} or a list of them, got shape {values.shape}")
    bad = values[(values < -count) | (values >= count)]
    if bad.size:
        raise JaxvizError(f"{noun} {bad[0]} is out of range for {count} {plural} (0..{count - 1}, or negative "
                          "from the end)")
    return np.where(values < 0, values + count, values).astype(np.int32)


def _integers(index, indices: str = "class indices") -> np.ndarray:
    """A concrete index as numpy values, refused unless whole numbers (integers, or floats like 3.0)."""
    values = np.asarray(index)
    if values.dtype.kind not in "iu" and not (values.dtype.kind == "f" and np.all(values == np.round(values))):
        raise JaxvizError(f"{indices} must be integers, got {values.dtype} {values.ravel()[:4].tolist()}")
    return values


def _broadcast_index(index, n: int) -> Array:
    if jnp.ndim(index) > 1 or jnp.size(index) not in (1, n):
        raise JaxvizError(f"index must be one class or ({n},) classes, one per image, got shape {jnp.shape(index)}")
    return jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))


def take_class(values: Array, index: Array) -> Array:
    """``values[i, ..., index[i]]``: (N, ..., C) and (N,) classes (or channels) -> (N, ...), negative
    from the end. A traced index out of range (-C..C-1) gives NaN, and so does a gradient through
    it (a NaN-filled gather alone differentiates to zero: a silent all-zero map), never another
    class; a concrete one is refused earlier (``class_index``)."""
    c = values.shape[-1]
    valid = (index >= -c) & (index < c)
    picked = jnp.take_along_axis(values, jnp.where(valid, index, 0).reshape((-1,) + (1,) * (values.ndim - 1)),
                                 axis=-1)[..., 0]
    flag = jnp.where(valid, 1, jnp.nan).astype(picked.dtype)
    return picked * flag.reshape((-1,) + (1,) * (picked.ndim - 1))


def current_trace() -> Any:
    """The JAX trace code runs under now (private API; None where this jax lacks it). An adapter
    compares it with the trace its forward pass started under: a submodule called under another one
    runs inside a transformation of the user's model (``nn.remat``, ``nn.scan``, ``jax.checkpoint``),
    whose intermediate values cannot be read or replaced from outside."""
    try:
        from jax._src import core as jax_core
        return jax_core.trace_ctx.trace
    except (ImportError, AttributeError):
        return None


def nested_layer_error(model_name: str, path: str) -> JaxvizError:
    return JaxvizError(f"layer {path} of {model_name} runs inside a JAX transformation of the model (nn.remat, "
                       "nn.scan, jax.checkpoint, ...): its output cannot be read or replaced from outside it; "
                       "name a layer outside the transformed module")


class StopForward(Exception):
    """Raised inside a forward pass once every requested activation is captured."""


class Model:
    """A network, its variables and its facts (see the module docstring).

    Subclasses implement ``_forward``; everything else is shared.
    """

    def __init__(self, params: PyTree, *, name: str = "model", preprocessing: Preprocessing | None = None,
                 input_size: int | tuple[int, int] | None = None, num_classes: int | None = None,
                 labels: Sequence[str] | None = None, aliases: Mapping[str, str] | None = None,
                 feature_layer: str | None = None, cam_layer: str | None = None,
                 eval_transform: EvalTransform | None = None, description: str = "", paper: str = ""):
        self.params = params
        self.name = name
        self.preprocessing = preprocessing or IDENTITY
        # how photographs of another shape become inputs (default: torchvision's Resize + CenterCrop)
        self.eval_transform = eval_transform or TORCHVISION_EVAL
        self.input_size = input_size
        self._num_classes = num_classes
        self.labels = tuple(labels) if labels is not None else None
        self.aliases = dict(aliases or {})
        self._feature_layer = feature_layer
        self.cam_layer = cam_layer
        self.description = description
        self.paper = paper
        # XLA options for jitting functions of this model (set by jaxviz.accel; empty: none)
        self.compiler_options: tuple[tuple[str, str | bool], ...] = ()
        self.backward_rule: Rule = "gradient"  # the ReLU backward rule (``with_backward``)
        self._derived: dict = {}
        self._probes: dict = {}
        self._repeated: set[str] = set()  # modules that run more than once per pass: not layers
        self._nested: set[str] = set()  # modules inside the model's own transformations: not layers
        self._probe_sink: dict | None = None

    # ------------------------------------------------------------------ what adapters provide

    def _forward(self, params: PyTree, x: Array, capture: tuple[str, ...] | str,
                 inject: Mapping[str, Array], stop_after: frozenset[str]) -> tuple[Array | None, dict]:
        """Run the network on ``x``; outputs of layers in ``inject`` are replaced by the given
        arrays; outputs of layers in ``capture`` (or all, for ``ALL``) are returned by name in
        the order they complete; once every layer of ``stop_after`` is done, the pass may stop
        (``StopForward``) and the output is None."""
        raise NotImplementedError

    @property
    def has_layers(self) -> bool:
        """Whether layers can be named (False for a plain ``apply_fn``)."""
        return True

    # ------------------------------------------------------------------ the pure functions

    def run(self, params: PyTree, x: Array, *, capture: Sequence[str] = (),
            inject: Mapping[str, Array] | None = None, output: bool = True) -> tuple[Array | None, dict[str, Array]]:
        """(output or None, {layer: activation}) of preprocessed ``x`` (N, H, W, 3).

        Args:
          capture: layer names (aliases allowed) whose outputs to return, keyed as given.
          inject: {layer: array} replacing those layers' outputs (same shapes).
          output: False stops the pass after the last captured layer (output None).
        """
        names = {c: self.resolve_layer(c) for c in capture}
        inject = {self.resolve_layer(k): v for k, v in (inject or {}).items()}
        stop = frozenset(names.values()) if not output and names else frozenset()
        out, captured = self._forward(params, x, tuple(dict.fromkeys(names.values())), inject, stop)
        missing = [c for c, n in names.items() if n not in captured]
        if missing:
            raise JaxvizError(f"layer(s) {', '.join(missing)} did not run in {self.name}'s forward pass")
        return out, {c: captured[n] for c, n in names.items()}

    def apply(self, params: PyTree, x: Array) -> Array:
        """The network's output for preprocessed ``x`` (N, H, W, 3): logits (N, classes) for a classifier."""
        return self.run(params, x)[0]

    def activations(self, params: PyTree, x: Array, layers: Sequence[str]) -> dict[str, Array]:
        """{layer: output} of the named layers, running only as far as the last of them."""
        return self.run(params, x, capture=layer_tuple(layers), output=False)[1]

    def activation(self, params: PyTree, x: Array, layer: str) -> Array:
        """The output of one named layer, e.g. (N, h, w, C)."""
        return self.activations(params, x, (layer,))[layer]

    def inject(self, params: PyTree, x: Array, layer: str, value: Array) -> Array:
        """The network's output with ``layer``'s output replaced by ``value``."""
        return self.run(params, x, inject={layer: value})[0]

    def logits(self, params: PyTree, x: Array, *, inject: Mapping[str, Array] | None = None) -> Array:
        """(N, classes) logits of preprocessed ``x`` (N, H, W, 3), with layers' outputs replaced as
        in ``run``.

        Raises:
          JaxvizError: a model whose output is not (N, classes) logits (a feature extractor).
        """
        logits = self.run(params, x, inject=inject)[0]
        if getattr(logits, "ndim", None) != 2:
            raise JaxvizError(f"{self.name} has no class logits (its output is {getattr(logits, 'shape', None)}, "
                              "not (N, classes)); explain a neuron target LAYER:CHANNEL")
        return logits

    def selected_logits(self, params: PyTree, x: Array, index: Array | None = None, *,
                        inject: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
        """((N,) logits, (N,) int32 classes): image n's logit of class ``index[n]``, with layers'
        outputs replaced as in ``run``. ``index`` None: each image's predicted class (argmax of
        the logits, no gradient through the choice).

        Raises:
          JaxvizError: a model whose output is not (N, classes) logits.

        The same values as reading them from ``apply`` (to float rounding); a model that knows
        its classifier head computes only the selected classes (the bundled networks: a 1x1
        convolution or dense layer followed by channel-wise stages), so a gradient does not run
        backward through the other classes' weights.
        """
        logits = self.logits(params, x, inject=inject)
        index = class_index(index, logits.shape[0], logits, logits.shape[-1])
        return take_class(logits, index), index

    def preprocess(self, images01: Array) -> Array:
        """(N, H, W, 3) RGB in [0, 1] -> model input."""
        return self.preprocessing(images01)

    def deprocess(self, x: Array) -> Array:
        """Model input -> RGB in [0, 1] (not clipped)."""
        return self.preprocessing.invert(x)

    def valid_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each (3,): the box of valid pixels in model-input space."""
        return self.preprocessing.valid_range()

    def resolve_params(self, params: PyTree | None) -> PyTree:
        """``params``, or for None the model's own (every technique's ``params=None``; a bare
        ``apply_fn`` has none of its own: it gets the None it was given, as a parameter-free
        function wants). Under ``jit`` the model's own become constants of the compiled program:
        pass them as an argument to share one program between parameter sets."""
        return self.params if params is None else params

    def prepare_params(self, params: PyTree) -> PyTree:
        """Params for many evaluations in a row (an image optimisation): the same values, maybe
        with precomputed forms (``jaxviz.accel`` stores transformed kernels); identity here."""
        return params

    # ------------------------------------------------------------------ derived models

    def with_backward(self, rule: Rule) -> "Model":
        """The same model whose ReLU/ReLU6 backward rule is ``rule`` ("gradient", "guided",
        "deconv"); forward values unchanged. Cached: the same object on every call."""
        if rule not in RULES:
            raise JaxvizError(f"unknown backward rule {rule!r}; use one of {', '.join(RULES)}")
        if rule == "gradient":
            return self
        key = ("backward", rule)
        if key not in self._derived:
            self._derived[key] = self.derive(_forward=self._forward_with_rule(rule), backward_rule=rule)
        return self._derived[key]

    def _forward_with_rule(self, rule: Rule):
        """A ``_forward`` whose ReLUs of the inputs (x and injected arrays) take ``rule``
        (``jaxviz.accel`` overrides this to apply the rule inside its own rewrite)."""
        base = self._forward

        def forward(params, x, capture, inject, stop_after):
            names = tuple(inject)

            def fn(p, xx, values):
                return base(p, xx, capture, dict(zip(names, values)), stop_after)
            return with_backward_rule(fn, rule, argnums=(1, 2))(params, x, tuple(inject[n] for n in names))
        return forward

    def _nested_call(self, outer: Any, path: str, named: set, everything: bool) -> bool:
        """Whether this call of the module at ``path`` runs inside the model's own transformation
        (``current_trace()`` is not ``outer``, the trace the pass started under): then it is not a
        layer: an error if it was asked for, remembered while probing, else run as it is."""
        if current_trace() is outer:
            return False
        if path in named:
            raise nested_layer_error(self.name, path)
        if everything:
            self._nested.add(path)
        return True

    def derive(self, **attributes) -> "Model":
        """A shallow copy with some attributes replaced (for adapters and ``jaxviz.accel``)."""
        other = copy.copy(self)
        other._derived = {}
        other._probes = self._probes
        other._repeated = self._repeated
        other._nested = self._nested
        for k, v in attributes.items():
            setattr(other, k, v)
        return other

    # ------------------------------------------------------------------ layers

    def _probe(self, size: tuple[int, int]) -> tuple[Any, dict]:
        """Shapes of the output and of every layer (abstract evaluation: no FLOPs). A network
        that fails part-way at this size (a fixed-size head) gives the layers before the
        failure and no output."""
        if size not in self._probes:
            x = jax.ShapeDtypeStruct((1,) + tuple(size) + (3,), jnp.float32)
            order: list[str] = []
            seen: dict = {}

            def forward(p, x):
                self._probe_sink = seen  # adapters record into it as the pass goes
                try:
                    out, acts = self._forward(p, x, ALL, {}, frozenset())
                finally:
                    self._probe_sink = None
                order.extend(acts)  # completion order (eval_shape returns dicts sorted by key)
                return out, acts
            try:
                out, acts = jax.eval_shape(forward, self.params, x)
                acts = {name: acts[name] for name in order}
            except Exception as e:
                if isinstance(e, JaxvizError) and not isinstance(e, ParamShapeError):
                    raise
                if not seen:
                    raise JaxvizError(f"{self.name} does not run on a 1x{size[0]}x{size[1]}x3 input "
                                      f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                      "declare its input_size") from None
                out = None
                acts = {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in seen.items()
                        if hasattr(a, "shape")}
            self._probes[size] = out, {n: a for n, a in acts.items() if n not in self._repeated}
        return self._probes[size]

    def input_hw(self, size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """(H, W) of ``size`` or of the declared input size (224 x 224 if none is declared)."""
        size = size if size is not None else self.input_size if self.input_size is not None else _PROBE
        h, w = (size, size) if isinstance(size, (int, np.integer)) else size
        return int(h), int(w)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every named layer, in the order the forward pass completes them."""
        if not self.has_layers:
            return ()
        return tuple(self._probe(self.input_hw())[1])

    def layer_shapes(self, size: int | tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
        """{layer: output shape without the batch axis} at input ``size`` (default: the input size)."""
        if not self.has_layers:
            return {}
        acts = self._probe(self.input_hw(size))[1]
        return {name: tuple(a.shape[1:]) for name, a in acts.items() if hasattr(a, "shape")}

    def output_shape(self, size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """Shape of the output without the batch axis."""
        hw = self.input_hw(size)
        if not self.has_layers:
            x = jax.ShapeDtypeStruct((1,) + hw + (3,), jnp.float32)
            try:
                return tuple(jax.eval_shape(lambda p, x: self.apply(p, x), self.params, x).shape[1:])
            except Exception as e:
                raise JaxvizError(f"{self.name} does not run on a 1x{hw[0]}x{hw[1]}x3 input "
                                  f"({e.__class__.__name__})") from None
        out = self._probe(hw)[0]
        if out is None:
            raise JaxvizError(f"{self.name} does not run to its output on a {hw[0]}x{hw[1]} input")
        return tuple(out.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """Classes of a classifier (declared, or the size of a 2-D output); None otherwise."""
        if self._num_classes is None and not hasattr(self, "_classes_probed"):
            self._classes_probed = True
            try:
                shape = self.output_shape()
                self._num_classes = shape[0] if len(shape) == 1 else None
            except JaxvizError:
                self._num_classes = None
        return self._num_classes

    def resolve_layer(self, name: str) -> str:
        """The canonical name of a layer given by name or alias; a clear error listing close names.

        ``/`` and ``.`` are interchangeable as separators of a module path.
        """
        if not self.has_layers:
            raise JaxvizError(f"{self.name} is a plain apply_fn without named layers: wrap a flax.linen or "
                              "flax.nnx module (jaxviz.from_linen / jaxviz.from_nnx) to use a layer")
        name = str(name)
        if name in self.aliases:
            return self.aliases[name]
        known = self.layer_names
        for variant in (name, name.replace(".", "/"), name.replace("/", ".")):
            if variant in self._repeated:
                raise JaxvizError(f"layer {variant} of {self.name} runs more than once in one forward pass "
                                  "(shared weights); name a module that runs once")
            if variant in self._nested:
                raise nested_layer_error(self.name, variant)
        if name in known:
            return name
        for variant in (name.replace(".", "/"), name.replace("/", ".")):
            if variant in known:
                return variant
        candidates = list(known) + list(self.aliases)
        close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            f"; known layers: {', '.join(candidates[:12])}{' ...' if len(candidates) > 12 else ''}"
        raise JaxvizError(f"unknown layer {name!r} for model {self.name}{hint}")

    def layer_order(self, names: Sequence[str]) -> list[str]:
        """Resolved ``names`` sorted by when the forward pass completes them."""
        order = {n: i for i, n in enumerate(self.layer_names)}
        return sorted((self.resolve_layer(n) for n in names), key=order.__getitem__)

    @property
    def feature_layer(self) -> str:
        """The layer Grad-CAM and friends use by default: the declared one, else the last layer
        with a spatial (h, w, C) output larger than 1 x 1."""
        if self._feature_layer:
            return self._feature_layer
        spatial = [n for n, s in self.layer_shapes().items() if len(s) == 3 and s[0] * s[1] > 1]
        if not spatial:
            raise JaxvizError(f"{self.name} has no layer with a spatial output; name one with layer=")
        return spatial[-1]

    def receptive_fields(self, size: int | tuple[int, int] | None = None) -> dict[str, ReceptiveField] | None:
        """{layer: ReceptiveField} where the architecture's geometry is known; None otherwise
        (``jaxviz.patches.measured_field`` measures one from gradient support)."""
        return None

    def smallest_input(self, layer: str, limit: int = 1024) -> int:
        """The smallest square input size at which ``layer``'s output is not empty."""
        layer = self.resolve_layer(layer)
        lo, hi = 1, limit
        if not self._nonempty(layer, hi):
            raise JaxvizError(f"layer {layer} of {self.name} is empty even at {hi} px")
        while lo < hi:
            mid = (lo + hi) // 2
            if self._nonempty(layer, mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _nonempty(self, layer: str, size: int) -> bool:
        try:
            shape = self.layer_shapes(size).get(layer)
        except JaxvizError:
            return False
        return shape is not None and math.prod(shape) > 0

    # ------------------------------------------------------------------ parameters per layer

    def layer_params(self, params: PyTree, layer: str) -> PyTree | None:
        """The parameters owned by ``layer`` (a subtree of ``params``), or None if it has none."""
        return None

    def replace_layer_params(self, params: PyTree, layer: str, new: PyTree) -> PyTree:
        """``params`` with ``layer``'s parameters replaced by ``new`` (same structure)."""
        raise JaxvizError(f"{self.name} does not expose per-layer parameters")

    # ------------------------------------------------------------------ incremental occlusion

    @property
    def incremental_stages(self) -> tuple | None:
        """The per-layer structure incremental occlusion needs (bundled networks), else None."""
        return None

    @property
    def class_head(self) -> int | None:
        """Position in ``incremental_stages`` of the classifier stage of which ``selected_logits``
        computes only the selected classes (bundled networks with such a head), else None."""
        return None

    def __repr__(self) -> str:
        return f"<jaxviz {type(self).__name__} {self.name}>"


class ApplyFnModel(Model):
    """A model known only by ``apply_fn(params, x) -> output``: no named layers."""

    def __init__(self, apply_fn: Callable[[PyTree, Array], Array], params: PyTree, **facts):
        facts.setdefault("name", getattr(apply_fn, "__name__", "apply_fn"))
        super().__init__(params, **facts)
        self.apply_fn = apply_fn

    @property
    def has_layers(self) -> bool:
        return False

    def _forward(self, params, x, capture, inject, stop_after):
        if capture or inject:
            self.resolve_layer(next(iter(inject or capture)) if (inject or capture) != ALL else "")
        try:
            return self.apply_fn(params, x), {}
        except TypeError as e:
            if (error := size_error(self, x, e)) is None:
                raise
            raise error from None


# What every technique's ``model`` argument takes: a Model, or a bare apply_fn(params, x) -> output.
ModelLike = Model | Callable[[PyTree, Array], Array]


def from_apply_fn(apply_fn: Callable[[PyTree, Array], Array], params: PyTree, **facts) -> Model:
    """A ``Model`` from ``apply_fn(params, x) -> logits`` (input-gradient techniques, batched
    occlusion, attacks, class visualisation; techniques that need a layer say so).

    ``facts``: ``name``, ``preprocessing``, ``input_size``, ``num_classes``, ``labels``, ...
    """
    return ApplyFnModel(apply_fn, params, **facts)


def as_model(model: ModelLike, params: PyTree | None = None) -> Model:
    """A ``Model`` as is; a bound ``Model.apply`` as its model; any other callable as a plain
    ``apply_fn`` model with ``params``."""
    if isinstance(model, Model):
        return model
    owner = getattr(model, "__self__", None)
    if isinstance(owner, Model) and getattr(model, "__name__", "") == "apply":
        return owner
    if callable(model):
        return _apply_fn_model(model)
    raise JaxvizError(f"expected a jaxviz Model or an apply_fn, got {type(model).__name__}")


_APPLY_FN_MODELS: dict = {}


def _apply_fn_model(fn: Callable) -> Model:
    # one Model per function, so that jitted techniques taking it as static compile once
    if fn not in _APPLY_FN_MODELS:
        if len(_APPLY_FN_MODELS) > 64:
            _APPLY_FN_MODELS.clear()
        _APPLY_FN_MODELS[fn] = ApplyFnModel(fn, None)
    return _APPLY_FN_MODELS[fn]
