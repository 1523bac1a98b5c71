"""JAX settings the front ends share: the persistent compilation cache and XLA-CPU compiler options."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp


def cache_dir() -> Path | None:
    """``$JAXVIZ_CACHE_DIR`` (``off`` disables it), default ``~/.cache/jaxviz/xla``."""
    value = os.environ.get("JAXVIZ_CACHE_DIR", "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "jaxviz" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache so a second process does not recompile.

    Every entry is cached (min size -1, min compile time 0): a cold SqueezeNet/VGG compile costs
    about a second on CPU, a cache hit about a tenth of that.
    """
    target = Path(path) if path else cache_dir()
    if target is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return target


def device_description() -> str:
    """E.g. 'cpu (2 devices)' or 'gpu: NVIDIA H100'."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"{jax.default_backend()}: {', '.join(kinds)} x{len(devices)}"


# ---------------------------------------------------------------- which library runs convolutions

# Recent XLA-CPU hands convolutions and matmuls to YNNPACK; its older Eigen path is faster for
# dense convolutions on the x86 CPUs measured here (VGG19 Gatys step 0.46 vs 0.50 s, SqueezeNet
# forward 1.4x, the fast-style network 3x) and slower for depthwise ones (EfficientNet-Lite 0.8x),
# so the choice is made per network. An XLA debug option: applied only where this jax accepts it.
_EIGEN_CONVOLUTIONS = (("xla_cpu_experimental_ynn_fusion_type", ""),)
# stage kinds with grouped (depthwise) convolutions, which YNNPACK runs faster
_GROUPED_CONV_KINDS = frozenset({"mbconv"})


@functools.lru_cache(maxsize=None)
def _accepts(options: tuple[tuple[str, str], ...]) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
        return True
    except Exception:  # an older jax without the option (or without compiler_options)
        return False


def compiler_options(model=None, *, dense_convolutions: bool | None = None) -> tuple[tuple[str, str], ...]:
    """XLA options (hashable ``((name, value), ...)``) for jitting a function of ``model``.

    Non-empty only on CPU, for networks whose convolutions are all dense (VGG, SqueezeNet, the
    fast-style networks), where it selects XLA's Eigen convolutions. Give ``model`` (a registry
    ``Model``) or say ``dense_convolutions`` directly. Same results either way, to float rounding.
    """
    if dense_convolutions is None:
        dense_convolutions = model is not None and not any(
            s.kind in _GROUPED_CONV_KINDS for s in model.spec.stages)
    if not dense_convolutions or jax.default_backend() != "cpu" or not _accepts(_EIGEN_CONVOLUTIONS):
        return ()
    return _EIGEN_CONVOLUTIONS


def jit(fn: Callable, options: tuple[tuple[str, str], ...] = (), **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with ``compiler_options`` when there are any (see ``compiler_options``)."""
    if options:
        kwargs["compiler_options"] = dict(options)
    return jax.jit(fn, **kwargs)


def dense_conv_jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit`` for a function of a dense-convolution network, as a decorator.

    The compiler options are chosen at the first call (not at import, which must not start a
    backend). XLA takes them only from a top-level jit, so inside a caller's transformation
    (``jit``, ``vmap``, ``grad``) this is a plain ``jax.jit``: composable as before.
    """
    plain = jax.jit(fn, **kwargs)
    tuned = []

    @functools.wraps(fn)
    def call(*args, **kw):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kw))):
            return plain(*args, **kw)
        if not tuned:
            tuned.append(jit(fn, compiler_options(dense_convolutions=True), **kwargs))
        return tuned[0](*args, **kw)
    return call
