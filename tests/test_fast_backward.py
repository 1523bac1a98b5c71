"""The image-optimisation speed-ups: precomputed (transposed, Winograd) kernels and per-network
XLA-CPU options.

Both must leave every value and gradient unchanged (to float rounding): checked against finite
differences in float64 and against the plain network.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.accel import accelerate, xla
from jaxviz.accel import fast_layers as nl
from jaxviz.accel.fast_layers import FastPoolNet
from jaxviz.interface import from_apply_fn
from jaxviz.optimize import optimize, sgd
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64
from tests.conftest import make_tiny_model


@pytest.mark.parametrize("cin, kernel, padding", [
    (3, (3, 3), (1, 1)),   # few input channels: the matmul + col2im input gradient
    (5, (3, 3), (1, 1)),   # the transposed-kernel convolution
    (6, (3, 5), (0, 2)),   # rectangular kernel, unequal padding
    (2, (1, 1), (0, 0)),
])
def test_conv_with_stored_kernels_matches_finite_differences(cin, kernel, padding):
    rng = np.random.default_rng(cin)
    with x64():
        x = rng.standard_normal((2, 7, 9, cin))
        w = jnp.asarray(rng.standard_normal(kernel + (cin, 4)))
        probe = jnp.asarray(rng.standard_normal((2, 7 + 2 * padding[0] - kernel[0] + 1,
                                                 9 + 2 * padding[1] - kernel[1] + 1, 4)))
        f = lambda v, k=w: jnp.sum(probe * nl.conv_with_stored_kernels(
            jnp.asarray(v), k, nl.stored_kernels(k), padding))
        analytic = jax.grad(f)(jnp.asarray(x))
        numeric = finite_difference_grad(f, x, eps=1e-6, indices=random_indices(x.shape, 40))
        assert_grads_close(analytic, numeric, rtol=1e-6, atol=1e-9)
        # the kernel gradient is the ordinary one
        dk = jax.grad(lambda k: f(x, k))(w)
        ref = jax.grad(lambda k: jnp.sum(probe * jax.lax.conv_general_dilated(
            jnp.asarray(x), k, (1, 1), [(p, p) for p in padding],
            dimension_numbers=("NHWC", "HWIO", "NHWC"))))(w)
        np.testing.assert_allclose(dk, ref, rtol=1e-10)


def test_winograd_layer_matches_finite_differences():
    rng = np.random.default_rng(7)
    with x64():
        x = rng.standard_normal((1, 5, 6, 128))
        w = jnp.asarray(rng.standard_normal((3, 3, 128, 128)) * 0.05)
        stored = nl.stored_kernels(w, winograd=True)
        assert set(stored) == {"transposed", "winograd", "transposed_winograd"}
        probe = jnp.asarray(rng.standard_normal((1, 5, 6, 128)))
        f = lambda v: jnp.sum(probe * nl.conv_with_stored_kernels(jnp.asarray(v), w, stored, (1, 1)))
        analytic = jax.grad(f)(jnp.asarray(x))
        numeric = finite_difference_grad(f, x, eps=1e-6, indices=random_indices(x.shape, 30))
        assert_grads_close(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cin, cout, winograd, key", [
    (8, 4, False, "transposed"), (128, 128, True, "transposed_winograd")])
def test_stored_kernels_are_what_the_passes_use(cin, cout, winograd, key):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 6, 6, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    stored = nl.stored_kernels(w, winograd)
    scaled = lambda name: {**stored, name: 2 * stored[name]}
    grad = lambda s: jax.grad(lambda v: jnp.sum(nl.conv_with_stored_kernels(v, w, s, (1, 1)) ** 2))(x)
    np.testing.assert_allclose(grad(scaled(key)), 2 * grad(stored), rtol=1e-4)
    if winograd:  # the forward pass uses the stored Winograd kernel
        value = lambda s: nl.conv_with_stored_kernels(x, w, s, (1, 1))
        np.testing.assert_allclose(value(scaled("winograd")), 2 * value(stored), rtol=1e-4, atol=1e-3)
    # the value does not depend on the stored kernels, so neither does its derivative
    d_stored = jax.grad(lambda s: jnp.sum(nl.conv_with_stored_kernels(x, w, s, (1, 1))))(stored)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree_util.tree_leaves(d_stored))


def test_winograd_only_where_it_pays():
    small = nl.stored_kernels(jnp.zeros((3, 3, 64, 128)), winograd=True)
    assert set(small) == {"transposed"}                      # too few channels
    assert set(nl.stored_kernels(jnp.zeros((3, 3, 128, 128)), winograd=False)) == {"transposed"}
    stored = nl.stored_kernels(jnp.zeros((3, 3, 128, 128)), winograd=True)
    assert nl._winograd_applies(jnp.zeros((1, 64, 64, 128)), (1, 1), stored, "winograd")
    assert not nl._winograd_applies(jnp.zeros((1, 128, 128, 128)), (1, 1), stored, "winograd")


def test_fast_model_with_stored_kernels_equals_plain_model(rng):
    model = make_tiny_model(2)
    fast = accelerate(model)
    assert type(fast.module) is FastPoolNet and fast.prepare_params is nl.with_stored_kernels
    assert accelerate(model) is fast and accelerate(fast) is fast  # applied once, cached
    params_t = fast.prepare_params(model.params)
    assert set(params_t["features.3"]) == {"kernel", "bias", "stored"}
    assert params_t["features.3"]["kernel"] is model.params["features.3"]["kernel"]  # shared, not copied
    assert nl.with_stored_kernels(model.params) is params_t     # the last result is reused
    assert nl.with_stored_kernels(params_t) is params_t         # stored kernels are kept
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
    loss = lambda apply, p, v: jnp.sum(apply(p, v) ** 2)
    ref_params, ref_x = jax.grad(loss, argnums=(1, 2))(model.apply, model.params, x)
    for params in (params_t, model.params):  # with and without the stored kernels
        np.testing.assert_allclose(fast.apply(params, x), model.apply(model.params, x), rtol=1e-6)
        grad_params, grad_x = jax.grad(loss, argnums=(1, 2))(fast.apply, params, x)
        np.testing.assert_allclose(grad_x, ref_x, rtol=1e-5, atol=1e-7)
        for name in model.params:
            np.testing.assert_allclose(grad_params[name]["kernel"], ref_params[name]["kernel"],
                                       rtol=1e-5, atol=1e-6)


def test_vgg19_with_winograd_kernels_equals_plain_network(vgg19):
    fast = accelerate(vgg19)
    params = nl.with_stored_kernels(vgg19.params, winograd=True)
    assert "winograd" in params["features.28"]["stored"]     # conv5_1
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 40, 48, 3)) * 50, jnp.float32)

    def loss(model, p, v):
        features = model.activation(p, v, "relu5_1")
        return jnp.sum(features ** 2), features

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=2, has_aux=True), static_argnums=0)
    (_, ref), g_ref = value_and_grad(vgg19, vgg19.params, x)
    (_, out), g = value_and_grad(fast, params, x)
    assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 1e-5
    assert float(jnp.abs(g - g_ref).max() / jnp.abs(g_ref).max()) < 1e-5


def test_compiler_options_per_network(squeezenet, lite0):
    assert accelerate(lite0).compiler_options == ()       # depthwise: keep XLA's default library
    assert squeezenet.compiler_options == ()              # a model that was not accelerated: none
    options = accelerate(squeezenet).compiler_options
    cpu = jax.default_backend() == "cpu"
    expected = ((xla._EIGEN_CONVOLUTIONS if cpu and xla._accepts(xla._EIGEN_CONVOLUTIONS) else ())
                + (xla._LEGACY_FUSION_EMITTERS if cpu and xla._accepts(xla._LEGACY_FUSION_EMITTERS) else ()))
    assert options == expected
    assert "squeezenet1_1" in xla.LEGACY_FUSION_NETWORKS
    assert xla.compiler_options(dense_convolutions=True, legacy_fusion_emitters=True) == options
    assert xla.compiler_options(dense_convolutions=False) == ()
    # the legacy emitters only for a registry network measured with them: not a user's model
    # that happens to share its name
    user = from_apply_fn(squeezenet.apply, squeezenet.params, name="squeezenet1_1")
    assert dict(accelerate(user).compiler_options).get("xla_cpu_use_fusion_emitters") is None
    # same values and gradients with and without the options
    x = jnp.asarray(np.random.default_rng(0).random((1, 64, 64, 3)), jnp.float32)
    for fn in (squeezenet.apply, jax.grad(lambda p, z: squeezenet.apply(p, z)[:, 3].sum(), argnums=1)):
        a = xla.jit(fn, options)(squeezenet.params, x)
        b = jax.jit(fn)(squeezenet.params, x)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_engine_with_compiler_options_optimises_the_same(tiny_model):
    x0 = jnp.asarray(np.random.default_rng(1).random((2, 16, 16, 3)), jnp.float32)
    loss = lambda x, keys: -tiny_model.apply(tiny_model.params, x)[:, 2]
    plain = optimize(loss, x0, optimizer=sgd(0.1), steps=5)
    tuned = optimize(loss, x0, optimizer=sgd(0.1), steps=5,
                     compiler_options=xla.compiler_options(dense_convolutions=True))
    np.testing.assert_allclose(tuned.images, plain.images, rtol=1e-5, atol=1e-6)
    assert float(tuned.losses[-1].sum()) < float(tuned.losses[0].sum())


def test_dense_conv_jit_composes_with_outer_transformations():
    calls = []

    @xla.dense_conv_jit
    def f(x):
        calls.append(1)  # traced once per (top-level or nested) jit cache entry
        return jnp.sin(x) * 2.0

    x = jnp.linspace(0.0, 1.0, 6).reshape(2, 3)
    np.testing.assert_allclose(f(x), jnp.sin(x) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-6)        # XLA options only at top level
    np.testing.assert_allclose(jax.vmap(f)(x), f(x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: f(v).sum())(x), 2.0 * jnp.cos(x), rtol=1e-6)
    before = len(calls)
    f(x)  # the top-level compiled function is reused
    assert len(calls) == before


def test_stored_transposes_made_on_the_host_equal_the_compiled_ones(rng):
    """Kernels without a Winograd form are transposed with numpy (no program to compile): the
    same arrays as the jitted path, which still serves traced parameters."""
    from jaxviz.accel import fast_layers as fl
    params = {"a": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 16, 32)), jnp.float32)},
              "b": {"kernel": jnp.asarray(rng.normal(size=(1, 1, 32, 8)), jnp.float32)}}
    fl._LAST_STORED.clear()
    host = fl.with_stored_kernels(params, winograd=True)  # 16/8 channels: no Winograd form
    compiled = fl._stored_kernels_of({(k,): v["kernel"] for k, v in params.items()}, True)
    traced = jax.jit(lambda p: fl.with_stored_kernels(p, winograd=True))(params)
    for k in params:
        assert set(host[k]["stored"]) == {"transposed"} == set(compiled[(k,)])
        np.testing.assert_array_equal(host[k]["stored"]["transposed"], compiled[(k,)]["transposed"])
        np.testing.assert_array_equal(traced[k]["stored"]["transposed"], compiled[(k,)]["transposed"])


def test_accelerated_models_are_reverse_mode_only_as_documented():
    # the docstring's statement, kept true: the plain model takes jax.jvp, the accelerated one
    # (custom_vjp backward passes) raises JAX's TypeError
    from tests.conftest import make_tiny_model
    model = make_tiny_model()
    x = jnp.ones((1, 16, 16, 3))
    plain = lambda v: model.apply(model.params, v).sum()  # noqa: E731
    jax.jvp(plain, (x,), (x,))
    fast = accelerate(model)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda v: fast.apply(fast.params, v).sum(), (x,), (x,))
