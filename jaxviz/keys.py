"""Randomness that does not depend on the batch: one PRNG key per image.

Every stochastic technique takes ``key``: one key, used for *every* image, or (N,) keys, one per
image. Image i's result is then a function of its own key only, so running it alone (with the
same key, or ``keys[i:i+1]``) reproduces its batch result exactly. Drawing noise once for the
batch's shape would make an image's noise depend on its position and on the batch size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError

Array = jax.Array


def typed_key(key: Array) -> Array:
    """A typed PRNG key (array) from a typed key or raw uint32 key data.

    Raises:
      JaxvizError: anything else (e.g. a bare seed ``0``: use ``jax.random.key(0)``).
    """
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim == 0 or key.shape[-1] not in (2, 4):  # a bare seed, or not key data
            raise JaxvizError(f"key must be a JAX PRNG key such as jax.random.key(0), got an array of shape "
                              f"{key.shape} and dtype {key.dtype}")
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    return key


def image_keys(key: Array | None, n: int) -> Array:
    """(N,) typed per-image keys from None (seed 0), one key (shared by every image) or N keys.

    Raises:
      JaxvizError: keys of another count.
    """
    key = typed_key(jax.random.key(0) if key is None else key)
    if key.ndim == 0:
        return jnp.broadcast_to(key, (n,))
    if key.shape != (n,):
        raise JaxvizError(f"key must be one PRNG key or {n} keys (one per image), got shape {key.shape}")
    return key
