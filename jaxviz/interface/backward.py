"""ReLU backward rules for guided backprop and the deconvnet, applied to any JAX model.

Guided backprop (Springenberg et al. 2015, "Striving for simplicity") and the deconvnet
(Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks") differ from the
gradient only in how the backward signal crosses each ReLU:

- gradient:    g_in = g * (x > 0)                        (ReLU6: also * (x < 6))
- guided:      g_in = g * (x > 0) * (g > 0)              (ReLU6: also * (x < 6))
- deconvnet:   g_in = g * (g > 0)                        (the same for ReLU6)

Each rule is a ``jax.custom_vjp`` ReLU with the ordinary forward pass. ``with_backward_rule(fn,
rule)`` puts them into a model without editing it and without hooks: it traces ``fn`` to a jaxpr
and evaluates it again with every ReLU replaced. A ReLU is ``jax.nn.relu`` / ``flax.linen.relu`` /
``nnx.relu`` (a ``custom_jvp`` call whose body is ``max(x, 0)``), ``jax.nn.relu6`` (``min(max(x,
0), 6)``), ``jnp.clip(x, 0[, 6])`` or a plain ``jnp.maximum(x, 0)`` (but not the one flax's
normalisation layers clamp their variance with, nor an integer clamp); any of them followed by
``jnp.minimum(., 6)`` (or the two the other way round) is a ReLU6. They are found inside jitted
calls, ``scan``, ``cond`` and ``while`` bodies too. The forward values are unchanged.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxviz.errors import JaxvizError

Array = jax.Array
Rule = Literal["gradient", "guided", "deconv"]
RULES = ("gradient", "guided", "deconv")


class NoReLUError(JaxvizError):
    """A guided / deconvnet backward rule asked of a function without ReLU or ReLU6."""

    def __init__(self, rule: str):
        super().__init__(f"{rule} backprop needs ReLU or ReLU6 non-linearities, and this model has none "
                         "(looked for jax.nn.relu, flax's relu, jax.nn.relu6, jnp.maximum(x, 0), jnp.clip(x, 0) and jnp.clip(x, 0, 6))")


@jax.custom_jvp
def positive_part(g: Array) -> Array:
    """max(g, 0) for float32 (and float64) arrays, computed on the bits: a negative number's sign bit
    clears it (-0.0 gives +0.0, +inf stays). The values of ``jnp.maximum(g, 0)`` for every input
    but a NaN with its sign bit set (0 here, NaN there). XLA-CPU vectorises it where a select or
    maximum at the end of a fused gradient loop was 3-4x slower (guided backprop through
    SqueezeNet's fused ReLU + max-pool backward). Its derivative is max's, (g > 0): the bit
    operations alone differentiate to 0, and a gradient of a guided map (with respect to the
    parameters or the input) would silently lose every term through the rule."""
    bits = {jnp.dtype(jnp.float32): jnp.int32, jnp.dtype(jnp.float64): jnp.int64}.get(jnp.dtype(g.dtype))
    if bits is None:
        return jnp.maximum(g, jnp.zeros((), g.dtype))
    i = jax.lax.bitcast_convert_type(g, bits)
    return jax.lax.bitcast_convert_type(i & ~(i >> (jnp.iinfo(bits).bits - 1)), g.dtype)


@positive_part.defjvp
def _positive_part_jvp(primals, tangents):
    (g,), (dg,) = primals, tangents
    return positive_part(g), jnp.where(g > 0, dg, jnp.zeros_like(dg))


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """ReLU whose backward pass is guided backprop's: g * (x > 0) * (g > 0)."""
    return jax.nn.relu(x)


def _guided_relu_fwd(x):
    return jax.nn.relu(x), x


def _guided_relu_bwd(x, g):
    return (jnp.where(x > 0, positive_part(g), jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


@jax.custom_vjp
def guided_relu6(x: Array) -> Array:
    """ReLU6 whose backward pass is guided: g * (0 < x < 6) * (g > 0)."""
    return jax.nn.relu6(x)


def _guided_relu6_fwd(x):
    return jax.nn.relu6(x), x


def _guided_relu6_bwd(x, g):
    return (jnp.where((x > 0) & (x < 6), positive_part(g), jnp.zeros_like(g)),)


guided_relu6.defvjp(_guided_relu6_fwd, _guided_relu6_bwd)


@jax.custom_vjp
def deconv_relu(x: Array) -> Array:
    """ReLU whose backward pass is the deconvnet's: the ReLU of the incoming signal, g * (g > 0)."""
    return jax.nn.relu(x)


def _deconv_fwd(x):
    return jax.nn.relu(x), None


def _deconv_bwd(_, g):
    return (positive_part(g),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


@jax.custom_vjp
def deconv_relu6(x: Array) -> Array:
    """ReLU6 whose backward pass is the deconvnet's: g * (g > 0) (the forward input is ignored)."""
    return jax.nn.relu6(x)


def _deconv6_fwd(x):
    return jax.nn.relu6(x), None


deconv_relu6.defvjp(_deconv6_fwd, _deconv_bwd)

ACTIVATIONS: dict[str, dict[str, Callable[[Array], Array]]] = {
    "gradient": {"relu": jax.nn.relu, "relu6": jax.nn.relu6},
    "guided": {"relu": guided_relu, "relu6": guided_relu6},
    "deconv": {"relu": deconv_relu, "relu6": deconv_relu6},
}


# ------------------------------------------------------------------ recognising ReLUs in a jaxpr

def _literal_value(atom) -> float | None:
    if isinstance(atom, jex_core.Literal):
        value = np.asarray(atom.val)
        if value.size == 1:
            return float(value.reshape(()))
    return None


def _is_max_zero(eqn) -> bool:
    """``max(x, 0)`` with a literal zero (jnp.maximum(x, 0), the body of jax.nn.relu)."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2:
        return False
    values = [_literal_value(v) for v in eqn.invars]
    return values.count(0.0) == 1 and values.count(None) == 1


def _body_eqns(jaxpr) -> list:
    """The equations of ``jaxpr``, with trivial jit wrappers (one pjit eqn) opened."""
    eqns = list(jaxpr.eqns)
    while len(eqns) == 1 and eqns[0].primitive.name in ("pjit", "jit", "closed_call"):
        inner = eqns[0].params.get("jaxpr") or eqns[0].params.get("call_jaxpr")
        eqns = list(getattr(inner, "jaxpr", inner).eqns)
    return eqns


def _clip_chain(eqn) -> list[tuple[str, float]] | None:
    """The bounds a ``jnp.clip`` call applies to its one free input, in order, e.g. ``[("max",
    0.0), ("min", 6.0)]`` for ``jnp.clip(x, 0, 6)`` in any argument form; None for anything else
    (a bound that is not a constant, other equations)."""
    inner = eqn.params.get("jaxpr")
    jaxpr = getattr(inner, "jaxpr", inner)
    if jaxpr is None or len(jaxpr.invars) != len(eqn.invars):
        return None
    const = {var: _literal_value(outer) for var, outer in zip(jaxpr.invars, eqn.invars)
             if _literal_value(outer) is not None}
    free = [var for var in jaxpr.invars if var not in const]
    if len(free) != 1:
        return None

    def value(atom):
        return _literal_value(atom) if isinstance(atom, jex_core.Literal) else const.get(atom)
    chain, current = [], free[0]
    for e in jaxpr.eqns:
        name, ins = e.primitive.name, list(e.invars)
        if name == "convert_element_type" and value(ins[0]) is not None:
            const[e.outvars[0]] = value(ins[0])
        elif name in ("max", "min") and len(ins) == 2 and current in ins:
            bound = value(ins[1] if ins[0] is current else ins[0])
            if bound is None:
                return None
            chain.append((name, bound))
            current = e.outvars[0]
        else:
            return None
    return chain if len(jaxpr.outvars) == 1 and jaxpr.outvars[0] is current else None


def _clip_kind(eqn) -> str | None:
    """'relu' / 'relu6' for ``jnp.clip(x, 0)`` / ``jnp.clip(x, 0, 6)`` in any argument form (the
    ReLU idiom of MobileNet-style code): max(x, 0), then min(., 6), and nothing else
    (``jnp.clip(x, None, 0)`` is min(x, 0): not a ReLU)."""
    return {(("max", 0.0),): "relu", (("max", 0.0), ("min", 6.0)): "relu6"}.get(tuple(_clip_chain(eqn) or ()))


def _floating(eqn) -> bool:
    """Whether the equation's (first) output is floating point: an integer clamp is no ReLU."""
    aval = getattr(eqn.outvars[0], "aval", None) if eqn.outvars else None
    return aval is not None and jnp.issubdtype(aval.dtype, jnp.floating)


@functools.lru_cache(maxsize=1)
def _flax_root() -> str | None:
    try:
        import flax
    except ImportError:
        return None
    return os.path.dirname(os.path.abspath(flax.__file__)) + os.sep


def _flax_variance_clamp(eqn) -> bool:
    """Whether flax's normalisation code wrote the equation (the innermost frame outside JAX is
    flax's ``normalization.py``, linen's or nnx's): the ``max(0, v)`` that clamps the variance of
    GroupNorm, LayerNorm, InstanceNorm and BatchNorm in training, not a ReLU. Only that file: a
    user's ``partial(jnp.maximum, 0.0)`` that flax's ``Sequential`` calls is still a ReLU."""
    root = _flax_root()
    if root is None:
        return False
    try:
        from jax._src import source_info_util
        frame = source_info_util.user_frame(eqn.source_info.traceback)
    except Exception:  # noqa: BLE001 (private API: without it every bare max(x, 0) counts)
        return False
    if frame is None:
        return False
    path = os.path.abspath(frame.file_name)
    return path.startswith(root) and os.path.basename(path) == "normalization.py"


def relu_kind(eqn: jex_core.JaxprEqn) -> str | None:
    """'relu' or 'relu6' if the equation is one of the ReLUs this module replaces, else None.

    A bare ``max(x, 0)`` of flax's normalisation layers is not one (``_flax_variance_clamp``), nor
    an integer one (a clamped index: its replacement would return floats)."""
    if not _floating(eqn):
        return None
    if _is_max_zero(eqn):
        return None if _flax_variance_clamp(eqn) else "relu"
    if eqn.primitive.name in ("pjit", "jit") and eqn.params.get("name") == "clip":
        return _clip_kind(eqn)
    if eqn.primitive.name != "custom_jvp_call":
        return None
    body = eqn.params["call_jaxpr"]
    eqns = _body_eqns(getattr(body, "jaxpr", body))
    if len(eqns) == 1 and _is_max_zero(eqns[0]):
        return "relu"
    if (len(eqns) == 2 and _is_max_zero(eqns[0]) and eqns[1].primitive.name == "min"
            and sorted(str(_literal_value(v)) for v in eqns[1].invars) == ["6.0", "None"]):
        return "relu6"
    return None


def _is_upper_six(eqn) -> bool:
    """``min(x, 6)`` with a literal six, bare or as ``jnp.clip(x, max=6)``, on floats."""
    if not _floating(eqn):
        return False
    if eqn.primitive.name == "min" and len(eqn.invars) == 2:
        return sorted(str(_literal_value(v)) for v in eqn.invars) == ["6.0", "None"]
    if eqn.primitive.name in ("pjit", "jit") and eqn.params.get("name") == "clip":
        return _clip_chain(eqn) == [("min", 6.0)]
    return False


def _free_input(eqn):
    """The one non-literal input of a ReLU or an upper bound of 6 (not its 0 or 6); None for a
    ReLU of a constant."""
    return next((v for v in eqn.invars if not isinstance(v, jex_core.Literal)), None)


def _bare_relu6(jaxpr) -> dict[int, tuple[int, object]]:
    """ReLU6 written as a ReLU (any form ``relu_kind`` knows) then ``min(., 6)`` (bare or
    ``jnp.clip(., max=6)``), or the two the other way round: {index of the first: (index of the
    second, x)}. Replaced as one ReLU6, not as a ReLU then an ordinary min, whose deconvnet rule
    would also zero the signal where x > 6. Only where the value between them has no other use.
    (A ReLU inside a separately jitted function is not paired: it is replaced on its own.)"""
    uses: dict = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, jex_core.Literal):
                uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
        if not isinstance(v, jex_core.Literal):
            uses[v] = uses.get(v, 0) + 2  # an output: never fused away
    first_of = {}
    for i, eqn in enumerate(jaxpr.eqns):
        if len(eqn.outvars) == 1 and uses.get(eqn.outvars[0]) == 1 and _free_input(eqn) is not None and (
                relu_kind(eqn) == "relu" or _is_upper_six(eqn)):
            first_of[eqn.outvars[0]] = i
    fused = {}
    for j, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            i = first_of.get(v) if not isinstance(v, jex_core.Literal) else None
            if i is None:
                continue
            first = jaxpr.eqns[i]
            if ((relu_kind(first) == "relu" and _is_upper_six(eqn))
                    or (_is_upper_six(first) and relu_kind(eqn) == "relu")):
                fused[i] = (j, _free_input(first))
    return fused


# checkpointed bodies (primitive "remat2" in current JAX) are inlined: the rule matters more than
# the memory saving of rematerialisation inside a guided / deconvnet pass
_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint")


def _sub_jaxprs(eqn) -> list:
    subs = []
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, (jex_core.ClosedJaxpr, jex_core.Jaxpr)):
                subs.append(v)
    return subs


def _contains_relu(jaxpr) -> bool:
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if relu_kind(eqn):
            return True
        if eqn.primitive.name != "custom_jvp_call" and any(_contains_relu(s) for s in _sub_jaxprs(eqn)):
            return True
    return False


# ------------------------------------------------------------------ the rewriting interpreter

class _Counter:
    def __init__(self):
        self.count = 0


def _eval(jaxpr, consts, args, activations: dict, counter: _Counter, live=None) -> list:
    """Evaluate ``jaxpr`` with every ReLU replaced by ``activations[kind]``.

    ``live[i]``: whether argument i is an input whose gradients matter; only ReLUs that depend on
    one are replaced (a ``max(grid, 0)`` inside ``jax.image.resize``'s weights is not a ReLU of
    the network). None: every argument.
    """
    env: dict = {}
    live = [True] * len(args) if live is None else list(live)
    dep = {v for v, on in zip(jaxpr.invars, live) if on}

    def depends(v) -> bool:
        return not isinstance(v, jex_core.Literal) and v in dep

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    relu6_pairs, skip = _bare_relu6(jaxpr), set()
    for i, eqn in enumerate(jaxpr.eqns):
        if i in skip:  # the second half of a ReLU6 already replaced
            continue
        live_in = [depends(v) for v in eqn.invars]
        if i in relu6_pairs and any(live_in):
            j, x = relu6_pairs[i]
            skip.add(j)
            counter.count += 1
            env[jaxpr.eqns[j].outvars[0]] = activations["relu6"](read(x))
            dep.update(jaxpr.eqns[j].outvars)
            continue
        invals = [read(v) for v in eqn.invars]
        kind = relu_kind(eqn)
        name = eqn.primitive.name
        if any(live_in):
            dep.update(eqn.outvars)
        if kind is not None and any(live_in):
            x = next(v for v, a in zip(invals, eqn.invars) if _literal_value(a) is None)  # not the 0 (or 6)
            counter.count += 1
            env[eqn.outvars[0]] = activations[kind](x)
            continue
        elif name in _CALLS and any(live_in) and _contains_relu(_sub_jaxprs(eqn)[0]):
            inner = _sub_jaxprs(eqn)[0]
            closed = inner if isinstance(inner, jex_core.ClosedJaxpr) else jex_core.ClosedJaxpr(inner, ())
            outs = _eval(closed.jaxpr, closed.consts, invals, activations, counter, live_in)
            for var, value in zip(eqn.outvars, outs):
                env[var] = value
            continue
        elif name != "custom_jvp_call" and any(live_in) and any(_contains_relu(s) for s in _sub_jaxprs(eqn)):
            params = {k: _rewrite_param(v, activations, counter) for k, v in eqn.params.items()}
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _rewrite_param(value, activations: dict, counter: _Counter):
    """Sub-jaxprs of control flow (scan, cond branches, while) with their ReLUs replaced."""
    if isinstance(value, (tuple, list)):
        return type(value)(_rewrite_param(v, activations, counter) for v in value)
    if isinstance(value, jex_core.ClosedJaxpr) and _contains_relu(value):
        avals = [v.aval for v in value.jaxpr.invars]
        fn = lambda *args: _eval(value.jaxpr, value.consts, args, activations, counter)  # noqa: E731
        return jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals])
    if isinstance(value, jex_core.Jaxpr) and _contains_relu(value):
        raise JaxvizError("a ReLU inside this kind of control flow cannot be given another backward rule")
    return value


def with_backward_rule(fn: Callable, rule: Rule, argnums: tuple[int, ...] | None = None) -> Callable:
    """``fn`` (any pure JAX function) with every ReLU/ReLU6 given the backward ``rule``.

    The forward values are those of ``fn``; only gradients change. Only ReLUs whose input
    depends on the arguments ``argnums`` (default: all) are replaced and counted. Tracing
    happens at call time (inside a caller's ``jit`` once per compilation).

    Raises:
      JaxvizError: an unknown rule, or (for guided/deconv) a function without any ReLU to replace.
    """
    if rule not in RULES:
        raise JaxvizError(f"unknown backward rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == "gradient":
        return fn
    activations = ACTIVATIONS[rule]

    def rewritten(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        counter = _Counter()
        live = [i in argnums if argnums is not None else True for i, arg in enumerate(args)
                for _ in jax.tree_util.tree_leaves(arg)]
        flat = _eval(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), activations, counter, live)
        if counter.count == 0:
            raise NoReLUError(rule)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), flat)
    return rewritten
