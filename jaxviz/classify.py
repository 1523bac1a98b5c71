"""Class probabilities and top-k predictions (pure, jittable)."""
from __future__ import annotations

from functools import partial

import jax

from jaxviz.interface import ModelLike, as_model

Array = jax.Array


@partial(jax.jit, static_argnames=("model", "k"))
def top_k(model: ModelLike, params: dict, images: Array, k: int = 5) -> tuple[Array, Array]:
    """Top-k softmax probabilities and class indices.

    Args:
      model: a ``jaxviz.interface.Model`` or ``apply_fn(params, x) -> logits (N, classes)``.
      images: (N, H, W, 3) preprocessed.
    Returns:
      probs (N, k) descending and indices (N, k).
    """
    probs = jax.nn.softmax(as_model(model).apply(params, images), axis=-1)
    return jax.lax.top_k(probs, k)


def predict_proba(model: ModelLike, params: dict, images: Array) -> Array:
    """(N, classes) softmax probabilities of preprocessed (N, H, W, 3) images."""
    return jax.nn.softmax(as_model(model).apply(params, images), axis=-1)
