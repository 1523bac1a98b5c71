"""Which library XLA-CPU runs convolutions with, chosen per network.

Recent XLA-CPU hands convolutions and matmuls to YNNPACK; its older Eigen path is faster for
dense convolutions on the x86 CPUs measured here (VGG19 Gatys step 0.46 vs 0.50 s, SqueezeNet
forward 1.4x, the fast-style network 3x) and slower for depthwise ones (EfficientNet-Lite 0.8x),
so the choice is made per network, from its traced program (grouped convolutions or not). For
the networks in ``LEGACY_FUSION_NETWORKS`` (measured one by one) XLA-CPU's legacy loop emitters
too: shorter compiles at the same speed. XLA debug options: applied only where this jax accepts
them, only on CPU, and only through a top-level ``jax.jit`` (XLA takes no options inside a
caller's transformation).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from jax.extend import core as jex_core

Options = tuple[tuple[str, str | bool], ...]
_EIGEN_CONVOLUTIONS: Options = (("xla_cpu_experimental_ynn_fusion_type", ""),)
_LEGACY_FUSION_EMITTERS: Options = (("xla_cpu_use_fusion_emitters", False),)
# Registry networks whose programs compile faster with XLA-CPU's legacy loop emitters than with
# its newer fusion emitters, and run as fast. Measured on a 2-core AMD EPYC (2026-12-02; compiles
# by `scripts/bench.py --compile`, steps in one process alternating the two): SqueezeNet 1.1's
# DeepDream octave programs 4.1 -> 2.3-2.6 CPU-s each (`jaxviz dream` cold compile 13.7 -> 8.8-10.3
# s), neuron visualisation's 3.9 -> 2.8, occlusion's 5.0 -> 4.1; steps as fast or faster (DeepDream
# 1.17x, Integrated Gradients 1.09x, the forward pass, vanilla gradients, Grad-CAM, PGD and
# occlusion within 4 %). Not VGG19: its Gatys program compiled slower (4.4 -> 5.4-6.0 CPU-s) at the
# same speed. A model not measured keeps XLA's default.
LEGACY_FUSION_NETWORKS = frozenset({"squeezenet1_1"})


@functools.lru_cache(maxsize=None)
def _accepts(options: Options) -> bool:
    try:
        # a numpy probe: jnp.zeros would compile a program of its own
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.zeros((), np.float32)).compile()
        return True
    except Exception:  # an older jax without the option (or without compiler_options)
        return False


def compiler_options(dense_convolutions: bool, legacy_fusion_emitters: bool = False) -> Options:
    """XLA options (hashable ``((name, value), ...)``) for jitting a function of a network: Eigen
    convolutions where its convolutions are all dense (``dense_convolutions``), the legacy fusion
    emitters where asked (``LEGACY_FUSION_NETWORKS``); empty off CPU, each only when accepted."""
    if jax.default_backend() != "cpu":
        return ()
    wanted = [group for group, on in ((_EIGEN_CONVOLUTIONS, dense_convolutions),
                                      (_LEGACY_FUSION_EMITTERS, legacy_fusion_emitters)) if on]
    return tuple(option for group in wanted if _accepts(group) for option in group)


def has_grouped_convolutions(fn: Callable, *args) -> bool:
    """Whether ``fn(*args)`` runs a grouped (e.g. depthwise) convolution, from its jaxpr."""
    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated" and (
                    eqn.params.get("feature_group_count", 1) > 1 or eqn.params.get("batch_group_count", 1) > 1):
                return True
            for value in eqn.params.values():
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(v, "jaxpr", v)
                    if isinstance(inner, jex_core.Jaxpr) and walk(inner):
                        return True
        return False
    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def jit(fn: Callable, options: Options = (), **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with ``compiler_options`` when there are any."""
    if options:
        kwargs["compiler_options"] = dict(options)
    return jax.jit(fn, **kwargs)


def dense_conv_jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit`` for a function of a dense-convolution network, as a decorator.

    The compiler options are chosen at the first call (not at import, which must not start a
    backend). Inside a caller's transformation (``jit``, ``vmap``, ``grad``) this is a plain
    ``jax.jit``: composable as before.
    """
    plain = jax.jit(fn, **kwargs)
    tuned = []

    @functools.wraps(fn)
    def call(*args, **kw):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kw))):
            return plain(*args, **kw)
        if not tuned:
            tuned.append(jit(fn, compiler_options(True), **kwargs))
        return tuned[0](*args, **kw)
    return call
