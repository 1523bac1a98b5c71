"""Any model's forward pass, re-evaluated with faster backward passes (``jaxviz.accel.ops``).

``rewrite(fn, rule)`` traces ``fn`` to a jaxpr and evaluates it again with:

- every dense NHWC convolution -> ``ops.conv`` (canonical-layout input gradient);
- every depthwise NHWC convolution -> ``ops.depthwise_conv`` (strided slices times taps: XLA-CPU
  runs grouped convolutions channel by channel);
- every NHWC ``reduce_window_max`` -> ``ops.max_pool`` (strided slices forward, index-routed
  backward), and a max-pool of a ReLU -> ``ops.relu_max_pool`` (the ReLU's output not stored);
- a channel concatenation consumed by max-pools or convolutions is never materialised: a pool of
  a concatenation is the concatenation of the parts' pools, a convolution of one the sum of the
  parts' convolutions with the matching kernel slices (SqueezeNet's fire modules);
- with ``rule`` "guided" / "deconv", every other ReLU/ReLU6 of the inputs replaced as
  ``jaxviz.interface.backward.with_backward_rule`` does (also inside ``scan`` / ``cond`` /
  ``while`` bodies and ``jax.checkpoint``), so ``rewrite(fn, rule)`` is both at once (that
  function would not see the ReLUs hidden in the fused pools). Such a rule acts on the sum of
  the gradients of a ReLU's consumers, so a ReLU is fused into a pool under it only when the pool
  is its sole consumer (through a concatenation too).

Left alone: convolutions that are neither dense nor depthwise 2-D NHWC/HWIO (other groupings,
dilated, transposed, NCHW), pools with dilations or over the batch/channel axes, other dtypes
than float32/float64, and whatever is inside a ``custom_jvp`` / ``custom_vjp`` function (its own derivative rule is kept).

Forward values are those of ``fn`` (pools bit for bit, convolutions of a concatenation to float
rounding); gradients are the same up to the summation order.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from jaxviz.accel import ops
from jaxviz.errors import JaxvizError
from jaxviz.interface.backward import ACTIVATIONS, RULES, NoReLUError, relu_kind
from jaxviz.interface.backward import (
    _bare_relu6,  # min(max(x, 0), 6) written out: one ReLU6
    _sub_jaxprs as _subs,  # every sub-jaxpr of an equation
)

_CALLS = ("pjit", "jit", "closed_call", "core_call")
_REMAT = ("remat", "remat2", "checkpoint")  # opened only for a ReLU rule (its memory saving lost)
_TARGETS = ("conv_general_dilated", "reduce_window_max", "concatenate")
_FLOATS = (jnp.float32, jnp.float64)


@dataclass
class _Relu:
    """A ReLU not yet applied: ``eqn`` on ``invals`` (its input ``x``)."""
    eqn: Any
    invals: list
    x: Any
    kind: str
    value: Any = None
    single: bool = False  # its output has one consumer (so a fused pool may take its rule)


@dataclass
class _Concat:
    """A channel (last axis) concatenation not yet materialised."""
    eqn: Any
    parts: list
    value: Any = None
    sizes: list = field(default_factory=list)
    single: bool = False


class _Evaluator:
    def __init__(self, rule: str):
        self.rule = rule
        self.relus = 0   # ReLUs of the inputs seen (fused or replaced)

    # ---------------------------------------------------------------- lazy values

    def force(self, v):
        if isinstance(v, _Relu):
            if v.value is None:
                if self.rule == "gradient":
                    v.value = _bind(v.eqn, v.invals)[0]
                else:
                    v.value = ACTIVATIONS[self.rule][v.kind](v.x)
            return v.value
        if isinstance(v, _Concat):
            if v.value is None:
                v.value = _bind(v.eqn, [self.force(p) for p in v.parts])[0]
            return v.value
        return v

    # ---------------------------------------------------------------- rules

    def pool(self, x, window, strides, padding, exclusive=True):
        # A guided / deconvnet ReLU acts on the sum of its consumers' gradients: one fused into a
        # pool takes the rule on the pool's share only, so it is fused only if the pool is its
        # sole consumer (the gradient rule is linear in g: any ReLU may be fused).
        if isinstance(x, _Concat):
            exclusive = exclusive and x.single
            return _Concat(x.eqn, [self.pool(p, window, strides, padding, exclusive) for p in x.parts],
                           sizes=x.sizes)
        if (isinstance(x, _Relu) and x.kind == "relu" and x.value is None
                and (self.rule == "gradient" or (exclusive and x.single))):
            return ops.relu_max_pool(x.x, window, strides, padding, self.rule)
        return ops.max_pool(self.force(x), window, strides, padding)

    def conv(self, x, kernel, params):
        if isinstance(x, _Concat):
            out, start = None, 0
            for part, size in zip(x.parts, x.sizes):
                y = ops.conv(self.force(part), kernel[:, :, start:start + size], params)
                out, start = (y if out is None else out + y), start + size
            return out
        return ops.conv(self.force(x), kernel, params)

    # ---------------------------------------------------------------- the interpreter

    def run(self, jaxpr, consts, args, live) -> list:
        env: dict = {}
        dep = {v for v, on in zip(jaxpr.invars, live) if on}

        def read(v):
            return v.val if isinstance(v, jex_core.Literal) else env[v]

        uses: dict = {}
        for atom in [a for eqn in jaxpr.eqns for a in eqn.invars] + list(jaxpr.outvars):
            if not isinstance(atom, jex_core.Literal):
                uses[atom] = uses.get(atom, 0) + 1
        for var, value in zip(jaxpr.constvars, consts):
            env[var] = value
        for var, value in zip(jaxpr.invars, args):
            env[var] = value
        relu6_pairs = _bare_relu6(jaxpr) if self.rule != "gradient" else {}  # the gradient: as written
        skip = set()
        for i, eqn in enumerate(jaxpr.eqns):
            if i in skip:  # the second half of a ReLU6 already replaced
                continue
            name = eqn.primitive.name
            raw = [read(v) for v in eqn.invars]
            live_in = [not isinstance(v, jex_core.Literal) and v in dep for v in eqn.invars]
            if i in relu6_pairs and any(live_in):
                j, x = relu6_pairs[i]
                skip.add(j)
                self.relus += 1
                env[jaxpr.eqns[j].outvars[0]] = ACTIVATIONS[self.rule]["relu6"](self.force(read(x)))
                dep.update(jaxpr.eqns[j].outvars)
                continue
            if any(live_in):
                dep.update(eqn.outvars)
            with _source(eqn):  # keep the layer names in profiles and XLA dumps
                outs = self.step(eqn, name, raw, live_in)
            for var, value in zip(eqn.outvars, outs):
                if isinstance(value, (_Relu, _Concat)):
                    value.single = uses.get(var, 0) == 1
                env[var] = value
        return [self.force(read(v)) for v in jaxpr.outvars]

    def step(self, eqn, name, raw, live_in) -> list:
        kind = relu_kind(eqn)
        if kind is not None and any(live_in):
            x = next(v for v, a in zip(raw, eqn.invars) if not isinstance(a, jex_core.Literal))  # not the 0 (or 6)
            x = self.force(x)
            self.relus += 1
            if kind == "relu" and getattr(x, "ndim", 0) == 4:
                return [_Relu(eqn, [self.force(v) for v in raw], x, kind)]
            if self.rule == "gradient":
                return _bind(eqn, [self.force(v) for v in raw])
            return [ACTIVATIONS[self.rule][kind](x)]
        avals = [v.aval for v in eqn.invars]
        if name == "concatenate" and len(raw) > 1 and avals[0].ndim == 4 and eqn.params["dimension"] == 3:
            return [_Concat(eqn, list(raw), sizes=[a.shape[-1] for a in avals])]
        if name == "reduce_window_max":
            p = eqn.params
            if (ops.pool_supported(avals[0].shape, p["window_dimensions"], p["window_strides"], p["padding"])
                    and all(d == 1 for d in p["base_dilation"]) and all(d == 1 for d in p["window_dilation"])
                    and avals[0].dtype in _FLOATS):
                return [self.pool(raw[0], tuple(p["window_dimensions"]), tuple(p["window_strides"]),
                                  tuple(tuple(q) for q in p["padding"]))]
        if name == "conv_general_dilated" and avals[0].dtype in _FLOATS and avals[1].dtype == avals[0].dtype:
            shapes, p = (avals[0].shape, avals[1].shape), eqn.params
            if ops.conv_supported(*shapes, p):
                return [self.conv(raw[0], self.force(raw[1]), tuple(sorted(p.items(), key=lambda kv: kv[0])))]
            if ops.depthwise_supported(*shapes, p):
                return [ops.depthwise_conv(self.force(raw[0]), self.force(raw[1]), tuple(p["window_strides"]),
                                           tuple(tuple(q) for q in p["padding"]))]
        vals = [self.force(v) for v in raw]
        guiding = self.rule != "gradient" and any(live_in)
        if (name in _CALLS and _contains_target(_sub(eqn))) or (
                name in _REMAT and guiding and _contains_relu(_sub(eqn))):
            inner = _sub(eqn)
            closed = inner if isinstance(inner, jex_core.ClosedJaxpr) else jex_core.ClosedJaxpr(inner, ())
            return self.run(closed.jaxpr, closed.consts, vals, live_in)
        if guiding and name not in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr") \
                and any(_contains_relu(j) for j in _subs(eqn)):
            # control flow (scan, cond, while): its bodies re-traced with the ReLU rule, as
            # with_backward_rule does (a custom derivative's own body is left as it is)
            params = {k: self.rewrite_param(v) for k, v in eqn.params.items()}
            outs = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(params))
            return list(outs) if eqn.primitive.multiple_results else [outs]
        return _bind(eqn, vals)

    def rewrite_param(self, value):
        if isinstance(value, (tuple, list)):
            return type(value)(self.rewrite_param(v) for v in value)
        if isinstance(value, jex_core.ClosedJaxpr) and _contains_relu(value):
            avals = [v.aval for v in value.jaxpr.invars]
            fn = lambda *args: self.run(value.jaxpr, value.consts, args, [True] * len(args))
            return jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals])
        if isinstance(value, jex_core.Jaxpr) and _contains_relu(value):
            raise JaxvizError("a ReLU inside this kind of control flow cannot be given another backward rule")
        return value


def _source(eqn):
    """The equation's source context (name stack: flax module paths) for what it binds."""
    try:
        from jax._src import source_info_util
        return source_info_util.user_context(eqn.source_info.traceback, name_stack=eqn.source_info.name_stack)
    except Exception:  # noqa: BLE001 (private API: without it only the op names of profiles are poorer)
        return contextlib.nullcontext()


def _bind(eqn, vals) -> list:
    outs = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
    return list(outs) if eqn.primitive.multiple_results else [outs]


def _sub(eqn):
    for value in eqn.params.values():
        if isinstance(value, (jex_core.ClosedJaxpr, jex_core.Jaxpr)):
            return value
    return None


def _contains_relu(jaxpr) -> bool:
    """Whether a ReLU the rule replaces is in ``jaxpr`` (not inside custom derivatives)."""
    if jaxpr is None:
        return False
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if relu_kind(eqn):
            return True
        if eqn.primitive.name not in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr") \
                and any(_contains_relu(j) for j in _subs(eqn)):
            return True
    return False


def _contains_target(jaxpr) -> bool:
    if jaxpr is None:
        return False
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _TARGETS or relu_kind(eqn):
            return True
        if eqn.primitive.name in _CALLS and _contains_target(_sub(eqn)):
            return True
    return False


def rewrite(fn: Callable, rule: str = "gradient", argnums: tuple[int, ...] | None = None) -> Callable:
    """``fn`` with the faster operations above and the ReLU backward ``rule``; the ReLU rule
    applies to ReLUs that depend on the arguments ``argnums`` (default: all), as in
    ``with_backward_rule``. Tracing happens at call time (under ``jit``: once per compilation).

    A ``jax.jit``-wrapped ``fn`` is traced through jit's own cache (never run): the same object
    called again with arguments of the same types, in the same JAX configuration, reuses its jaxpr.
    """
    if rule not in RULES:
        raise JaxvizError(f"unknown backward rule {rule!r}; use one of {', '.join(RULES)}")

    def rewritten(*args):
        if isinstance(fn, jax.stages.Wrapped):
            traced = fn.trace(*args)
            closed, out_tree = traced.jaxpr, traced.out_tree
        else:
            closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
            out_tree = jax.tree_util.tree_structure(out_shape)
        live = [argnums is None or i in argnums for i, arg in enumerate(args)
                for _ in jax.tree_util.tree_leaves(arg)]
        evaluator = _Evaluator(rule)
        flat = evaluator.run(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), live)
        if rule != "gradient" and evaluator.relus == 0:
            raise NoReLUError(rule)
        return jax.tree_util.tree_unflatten(out_tree, flat)
    return rewritten
