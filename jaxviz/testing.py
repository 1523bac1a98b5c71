"""Helpers for tests of truth: central finite differences in float64.

Usage (inside ``with x64():``)::

    numeric = finite_difference_grad(lambda x: score(params64, x), x64)
    assert_grads_close(jax.grad(lambda x: score(params64, x))(x64), numeric)
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def finite_difference_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-5,
                           indices: np.ndarray | None = None) -> np.ndarray:
    """Central differences (f(x + e_i h) - f(x - e_i h)) / 2h of a scalar ``f`` in float64.

    Args:
      f: scalar function of an array shaped like ``x``.
      x: the point (cast to float64; run JAX code under ``x64()``).
      indices: flat indices to differentiate (default all); others are left as NaN.
    Returns:
      an array shaped like ``x`` with the numerical partial derivatives.
    """
    x = np.asarray(x, dtype=np.float64)
    grad = np.full(x.size, np.nan)
    flat = x.reshape(-1)
    for i in (range(x.size) if indices is None else indices):
        step = np.zeros_like(flat)
        step[i] = eps
        grad[i] = (float(f((flat + step).reshape(x.shape))) - float(f((flat - step).reshape(x.shape)))) / (2 * eps)
    return grad.reshape(x.shape)


def assert_grads_close(analytic: np.ndarray, numeric: np.ndarray, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Compare where ``numeric`` was computed (non-NaN); a clear message on mismatch."""
    analytic = np.asarray(analytic, dtype=np.float64)
    mask = ~np.isnan(numeric)
    assert mask.any(), "no finite differences were computed"
    np.testing.assert_allclose(analytic[mask], numeric[mask], rtol=rtol, atol=atol,
                               err_msg="jax.grad disagrees with central finite differences")


def random_indices(shape: tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
    """A few flat indices to check (full finite differences are O(size) forward passes)."""
    size = int(np.prod(shape))
    return np.random.default_rng(seed).choice(size, size=min(count, size), replace=False)


def x64() -> object:
    """Context manager enabling float64 in JAX (for finite-difference checks)."""
    # jax.enable_x64 (new) or jax.experimental.enable_x64 (older releases)
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64()
