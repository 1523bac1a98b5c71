"""Process settings the front ends share: the persistent compilation cache, the host allocator's
large-buffer policy and the device description."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import jax


def cache_dir() -> Path | None:
    """``$JAXVIZ_CACHE_DIR`` (``off`` disables it), default ``~/.cache/jaxviz/xla``."""
    value = os.environ.get("JAXVIZ_CACHE_DIR", "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "jaxviz" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache so a second process does not recompile.

    Every entry is cached (min size -1, min compile time 0): a cold SqueezeNet/VGG compile costs
    about a second on CPU, a cache hit about a tenth of that. The cache is only a speed-up: a
    folder that cannot be made or written (a read-only or missing ``$HOME`` in a container) turns
    it off with one line on stderr, and None is returned.
    """
    target = Path(path) if path else cache_dir()
    if target is None:
        return None
    try:
        target.mkdir(parents=True, exist_ok=True)
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as e:
        print(f"jaxviz: compilation cache off: cannot use {target} ({e.strerror or e}); "
              "set JAXVIZ_CACHE_DIR to a writable folder, or to 'off'", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return target


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)


def fix_mmap_threshold(threshold_bytes: int = 4 << 20) -> bool:
    """Serve host buffers of ``threshold_bytes`` or more by mmap, always (glibc only).

    glibc raises its mmap threshold each time a large mmapped buffer is freed (up to 32 MiB), after
    which buffers of a few MiB come from the heap and their freed pages are seldom returned. A
    long run of XLA-CPU calls whose buffer sizes vary (incremental occlusion's per-window stages)
    then creeps up: 1000 images of ``jaxviz saliency --method occlusion`` peaked 20% above 32
    images. A fixed threshold keeps peak memory flat in the number of images. Returns whether the
    setting was applied (False off Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False


def device_description() -> str:
    """E.g. 'cpu (2 devices)' or 'gpu: NVIDIA H100'."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"{jax.default_backend()}: {', '.join(kinds)} x{len(devices)}"
