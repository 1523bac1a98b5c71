"""jax.grad of a class score w.r.t. the input equals central finite differences (float64)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.targets import Target, score_fn
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64


def test_input_gradient_of_class_score_matches_finite_differences(tiny_model):
    with x64():
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), tiny_model.params)
        x = np.random.default_rng(0).standard_normal((2, 12, 14, 3))  # batch 2, non-square
        score = score_fn(tiny_model, Target(index=3))
        f = lambda v: jnp.sum(score(params, jnp.asarray(v)))
        analytic = jax.grad(f)(jnp.asarray(x))
        numeric = finite_difference_grad(f, x, eps=1e-6, indices=random_indices(x.shape, 60))
        assert_grads_close(analytic, numeric, rtol=1e-6, atol=1e-9)
        assert float(jnp.abs(analytic).max()) > 0


def test_finite_difference_helper_on_known_function():
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    numeric = finite_difference_grad(lambda v: np.sum(v ** 3), x)
    np.testing.assert_allclose(numeric, 3 * x ** 2, rtol=1e-8)
