"""Winograd F(2x2, 3x3) convolution: equal to the direct convolution (float64: to rounding)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.accel.winograd import winograd_conv, winograd_kernel
from jaxviz.testing import x64


def _direct(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("n, h, w, c, k", [(1, 8, 8, 3, 5), (2, 7, 9, 4, 6), (1, 1, 1, 2, 3), (3, 6, 5, 1, 1)])
def test_winograd_equals_direct_convolution(n, h, w, c, k):
    rng = np.random.default_rng(h * w + c)
    with x64():
        x = jnp.asarray(rng.standard_normal((n, h, w, c)))
        kernel = jnp.asarray(rng.standard_normal((3, 3, c, k)))
        out = winograd_conv(x, winograd_kernel(kernel))
        assert out.shape == (n, h, w, k)
        np.testing.assert_allclose(out, _direct(x, kernel), rtol=1e-12, atol=1e-12)


def test_winograd_float32_error_is_float_rounding():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 32, 32, 256)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 256, 64)) * 0.05, jnp.float32)
    ref = _direct(x, kernel)
    err = float(jnp.abs(winograd_conv(x, winograd_kernel(kernel)) - ref).max() / jnp.abs(ref).max())
    assert err < 1e-5


def test_winograd_kernel_shape_and_rejects_other_sizes():
    assert winograd_kernel(jnp.zeros((3, 3, 4, 7))).shape == (16, 4, 7)
    with pytest.raises(ValueError, match="3x3"):
        winograd_kernel(jnp.zeros((5, 5, 4, 7)))
