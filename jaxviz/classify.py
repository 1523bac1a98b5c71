"""Class probabilities and top-k predictions (pure, jittable)."""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


@partial(jax.jit, static_argnames=("apply_fn", "k"))
def top_k(apply_fn: Callable, params: dict, images: Array, k: int = 5) -> tuple[Array, Array]:
    """Top-k softmax probabilities and class indices.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (N, classes)`` on preprocessed input.
      images: (N, H, W, 3) preprocessed.
    Returns:
      probs (N, k) descending and indices (N, k).
    """
    probs = jax.nn.softmax(apply_fn(params, images), axis=-1)
    return jax.lax.top_k(probs, k)


def predict_proba(apply_fn: Callable, params: dict, images: Array) -> Array:
    """(N, classes) softmax probabilities of preprocessed (N, H, W, 3) images."""
    return jax.nn.softmax(apply_fn(params, images), axis=-1)
