"""jaxviz.accel.ops / rewrite: the forward pass re-evaluated with fast-backward convolutions and
max-pools, fused ReLU + max-pool, unmaterialised channel concatenations and the guided /
deconvnet ReLU rules.

Truth checks: each op's value equals its lax original (bitwise for the pools, which only compare
and select) and its gradient equals float64 central differences (and jax.grad of the original,
including at ties: the row-major first maximum of a window takes the gradient, as
``select_and_scatter`` gives it); ``rewrite(fn, rule)`` equals ``fn`` (values and gradients) on
every ``any_model`` model, a fire-module model with concatenations and ``with_backward_rule``'s
guided / deconvnet gradients, under ``vmap`` and ``lax.map`` too; the real SqueezeNet 1.1.
"""
from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz.accel import accelerate, ops
from jaxviz.accel.rewrite import rewrite
from jaxviz.errors import JaxvizError
from jaxviz.interface import TORCHVISION, from_linen
from jaxviz.interface.backward import deconv_relu, guided_relu, with_backward_rule
from jaxviz.testing import (
    assert_grads_close,
    finite_difference_grad,
    random_indices,
    x64,
)
from tests.conftest import make_tiny_model, resnet18_model
from tests.user_models import apply_fn_model, linen_model, nnx_model

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(params=["bundled", "linen", "nnx", pytest.param("resnet18", marks=pytest.mark.slow)])
def any_model(request):
    """conftest's model matrix; ResNet-18's rewrite cases (about 20 s of compiling on 2 cores) run
    with -m slow: the linen model covers residual adds and BatchNorm in the default suite."""
    return {"bundled": make_tiny_model, "linen": linen_model, "nnx": nnx_model,
            "resnet18": resnet18_model}[request.param]()


def _primitives(fn, *args) -> list[str]:
    """Names of the top-level primitives of ``fn``'s jaxpr (pjit bodies opened)."""
    names = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.append(eqn.primitive.name)
            if eqn.primitive.name in ("pjit", "jit"):
                walk(eqn.params["jaxpr"].jaxpr)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


def _custom_names(fn, *args) -> list[str]:
    """The ``name`` of every custom_vjp call in ``fn``'s jaxpr (ops.conv, ops.max_pool, ...)."""
    out = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "custom_vjp_call":  # named by its backward function
                out.append(re.search(r"Core: _(\w+)_bwd", str(eqn.params["bwd"])).group(1))
            for v in eqn.params.values():
                for j in v if isinstance(v, (tuple, list)) else (v,):
                    if (hasattr(j, "eqns") or hasattr(j, "jaxpr")) and eqn.primitive.name != "custom_vjp_call":
                        walk(getattr(j, "jaxpr", j))
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


# --------------------------------------------------------------------------- ops.conv

def _conv_params(x, kernel, strides, padding) -> tuple:
    """The conv_general_dilated primitive's parameters, as ``rewrite`` hands them to ops.conv."""
    eqn = jax.make_jaxpr(lambda a, b: lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=NHWC))(
        x, kernel).jaxpr.eqns[0]
    assert ops.conv_supported(x.shape, kernel.shape, eqn.params)
    return tuple(sorted(eqn.params.items(), key=lambda kv: kv[0]))


CONV_CASES = [  # cin, kernel, strides, padding, input (h, w)
    (3, (3, 3), (1, 1), ((1, 1), (1, 1)), (7, 9)),      # RGB first layer: matmul + col2im
    (3, (7, 7), (2, 2), ((3, 3), (3, 3)), (11, 10)),    # ResNet's stem shape
    (3, (3, 3), (2, 2), ((0, 0), (0, 0)), (8, 9)),      # SqueezeNet's: the stride does not divide
    (2, (1, 1), (2, 3), ((2, 1), (0, 3)), (7, 8)),      # padding wider than the kernel
    (5, (3, 3), (1, 1), ((1, 1), (1, 1)), (6, 7)),      # transposed convolution
    (5, (3, 3), (2, 2), ((1, 0), (2, 1)), (9, 8)),      # strided, unequal padding
    (6, (3, 5), (1, 1), ((0, 1), (2, 2)), (7, 9)),      # rectangular kernel
    (6, (2, 3), (3, 2), ((0, 2), (1, 0)), (10, 7)),     # rectangular strides
    (5, (1, 1), (1, 1), ((2, 1), (0, 3)), (5, 6)),      # padding wider than the kernel
]


@pytest.mark.parametrize("cin, ksize, strides, padding, hw", CONV_CASES)
def test_conv_equals_lax_and_finite_differences(cin, ksize, strides, padding, hw):
    rng = np.random.default_rng(cin * 31 + ksize[1])
    x32 = jnp.asarray(rng.standard_normal((2,) + hw + (cin,)), jnp.float32)
    k32 = jnp.asarray(rng.standard_normal(ksize + (cin, 4)), jnp.float32)
    lax_conv = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)
    # the forward pass is the primitive itself: bit for bit
    both = jax.jit(lambda x, k: (ops.conv(x, k, _conv_params(x32, k32, strides, padding)), lax_conv(x, k)))
    np.testing.assert_array_equal(*both(x32, k32))
    with x64():
        x, k = jnp.asarray(x32, jnp.float64), jnp.asarray(k32, jnp.float64)
        params = _conv_params(x, k, strides, padding)
        probe = jnp.asarray(rng.standard_normal(jax.eval_shape(lax_conv, x, k).shape))
        f = jax.jit(lambda v: jnp.sum(probe * ops.conv(v, k, params)))
        grads = jax.jit(lambda v, w: (
            jax.grad(lambda a, b: jnp.sum(probe * ops.conv(a, b, params)), argnums=(0, 1))(v, w),
            jax.grad(lambda a, b: jnp.sum(probe * lax_conv(a, b)), argnums=(0, 1))(v, w)))
        (g, dk), (ref_x, ref_k) = grads(x, k)
        # linear in x: a large step has no truncation error and little rounding error
        numeric = finite_difference_grad(f, np.asarray(x), eps=1e-2, indices=random_indices(x.shape, 40, seed=cin))
        assert_grads_close(g, numeric, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(g, ref_x, rtol=1e-10, atol=1e-12)  # every element, not only the sampled
        np.testing.assert_allclose(dk, ref_k, rtol=1e-10, atol=1e-12)


def test_conv_supported_refuses_what_it_does_not_handle():
    x = jnp.zeros((1, 8, 8, 4))
    params = lambda cin=4, **kw: jax.make_jaxpr(lambda a, b: lax.conv_general_dilated(
        a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kw))(x, jnp.zeros((3, 3, cin, 6))).jaxpr.eqns[0].params
    assert ops.conv_supported(x.shape, (3, 3, 4, 6), params())
    assert not ops.conv_supported(x.shape, (3, 3, 2, 6), params(2, feature_group_count=2))
    assert not ops.conv_supported(x.shape, (3, 3, 4, 6), params(rhs_dilation=(2, 2)))
    assert not ops.conv_supported(x.shape, (3, 3, 4, 6), params(lhs_dilation=(2, 1)))
    nchw = jax.make_jaxpr(lambda a, b: lax.conv(a, b, (1, 1), "SAME"))(
        jnp.zeros((1, 4, 8, 8)), jnp.zeros((6, 4, 3, 3))).jaxpr.eqns[0].params
    assert not ops.conv_supported((1, 4, 8, 8), (6, 4, 3, 3), nchw)


# --------------------------------------------------------------------------- ops.depthwise_conv

DEPTHWISE_CASES = [  # kernel (kh, kw), strides, padding, input (h, w)
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (7, 9)),      # MobileNet / EfficientNet stride 1
    ((3, 3), (2, 2), ((0, 1), (0, 1)), (9, 8)),      # TF 'SAME' at stride 2: asymmetric padding
    ((5, 5), (2, 2), ((2, 2), (2, 2)), (11, 10)),    # 5 x 5, stride 2, odd size
    ((3, 2), (1, 2), ((1, 0), (0, 0)), (6, 7)),      # rectangular, unequal, valid on one axis
]


def _lax_depthwise(x, k, strides, padding):
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC, feature_group_count=x.shape[-1])


@pytest.mark.parametrize("ksize, strides, padding, hw", DEPTHWISE_CASES)
def test_depthwise_conv_equals_lax_in_values_and_gradients(ksize, strides, padding, hw):
    """ops.depthwise_conv == the grouped lax convolution, and its gradients (input and kernel) ==
    jax.grad of the lax form and float64 central differences."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, *hw, 5)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((*ksize, 1, 5)), jnp.float32)
    np.testing.assert_allclose(ops.depthwise_conv(x, k, strides, padding), _lax_depthwise(x, k, strides, padding),
                               rtol=1e-5, atol=1e-5)
    w = jnp.asarray(rng.standard_normal(_lax_depthwise(x, k, strides, padding).shape), jnp.float32)
    mine = jax.grad(lambda a, b: (ops.depthwise_conv(a, b, strides, padding) * w).sum(), (0, 1))(x, k)
    ref = jax.grad(lambda a, b: (_lax_depthwise(a, b, strides, padding) * w).sum(), (0, 1))(x, k)
    for m, r in zip(mine, ref):
        np.testing.assert_allclose(m, r, rtol=1e-4, atol=1e-4)
    with x64():
        x64_, k64 = np.asarray(x, np.float64), np.asarray(k, np.float64)
        f = lambda a: (ops.depthwise_conv(a, jnp.asarray(k64), strides, padding) * np.asarray(w, np.float64)).sum()
        fd = finite_difference_grad(f, x64_, indices=random_indices(x64_.shape, 12, seed=1))
        assert_grads_close(jax.grad(f)(jnp.asarray(x64_)), fd, rtol=1e-6, atol=1e-8)


def test_depthwise_supported_and_a_depthwise_model_is_rewritten():
    """Only one-filter-per-channel groupings are taken; a linen model with a depthwise layer is
    rewritten (no grouped convolution left) and equals the original in values and input gradients."""
    x = jnp.zeros((1, 8, 8, 4))
    params = lambda k, **kw: jax.make_jaxpr(lambda a, b: lax.conv_general_dilated(
        a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kw))(x, jnp.zeros(k)).jaxpr.eqns[0].params
    assert ops.depthwise_supported(x.shape, (3, 3, 1, 4), params((3, 3, 1, 4), feature_group_count=4))
    assert not ops.depthwise_supported(x.shape, (3, 3, 2, 4), params((3, 3, 2, 4), feature_group_count=2))
    assert not ops.depthwise_supported(x.shape, (3, 3, 1, 8), params((3, 3, 1, 8), feature_group_count=4))
    assert not ops.depthwise_supported(x.shape, (3, 3, 1, 4), params((3, 3, 1, 4), feature_group_count=4,
                                                                     rhs_dilation=(2, 2)))

    class Separable(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(6, (3, 3))(x))
            x = nn.relu(nn.Conv(6, (3, 3), strides=2, feature_group_count=6)(x))
            return nn.Dense(3)(x.mean(axis=(1, 2)))
    module = Separable()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 9, 10, 3)))
    xs = jnp.asarray(np.random.default_rng(0).random((2, 9, 10, 3)), jnp.float32)
    fn = lambda v, a: module.apply(v, a)
    fast = rewrite(fn)
    grouped = [e for e in jax.make_jaxpr(fast)(variables, xs).jaxpr.eqns
               if e.primitive.name == "conv_general_dilated" and e.params["feature_group_count"] > 1]
    assert not grouped
    np.testing.assert_allclose(fast(variables, xs), fn(variables, xs), rtol=1e-5, atol=1e-6)
    g = lambda f: jax.grad(lambda a: f(variables, a)[:, 1].sum())(xs)
    np.testing.assert_allclose(g(fast), g(fn), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- ops.max_pool

POOL_CASES = [  # window, strides, padding (spatial), input (h, w)
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (7, 9)),      # non-dividing: the last row/column dropped
    ((3, 3), (2, 2), ((0, 1), (0, 1)), (9, 8)),      # SqueezeNet's ceil mode (overlapping windows)
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (8, 7)),      # ResNet's padded pool
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (5, 6)),      # SAME, stride 1
    ((3, 2), (2, 3), ((1, 0), (0, 2)), (8, 10)),     # rectangular, unequal padding
    ((1, 1), (2, 2), ((0, 0), (0, 0)), (5, 5)),      # a pure subsampling
]


def _lax_pool(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + window + (1,), (1,) + strides + (1,),
                             ((0, 0),) + padding + ((0, 0),))


def _op_args(window, strides, padding):
    return (1,) + window + (1,), (1,) + strides + (1,), ((0, 0),) + padding + ((0, 0),)


@pytest.mark.parametrize("window, strides, padding, hw", POOL_CASES)
def test_max_pool_is_bitwise_lax_and_routes_ties_to_the_first_maximum(window, strides, padding, hw):
    rng = np.random.default_rng(hw[0] * 10 + hw[1])
    args = _op_args(window, strides, padding)
    assert ops.pool_supported((2,) + hw + (3,), *args)
    # few distinct values: most windows hold ties
    x = jnp.asarray(rng.integers(-2, 3, (2,) + hw + (3,)), jnp.float32)
    probe = jnp.asarray(rng.integers(1, 9, jax.eval_shape(lambda v: _lax_pool(v, window, strides, padding), x).shape), jnp.float32)

    def both(v, p):
        ours = lambda u: ops.max_pool(u, *args)
        theirs = lambda u: _lax_pool(u, window, strides, padding)
        return (ours(v), theirs(v), jax.grad(lambda u: jnp.sum(p * ours(u)))(v),
                jax.grad(lambda u: jnp.sum(p * theirs(u)))(v))
    y, ref_y, g, ref_g = jax.jit(both)(x, probe)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(g, ref_g)  # integer sums: exact whatever the order
    # distinct values: the true gradient, float64 central differences
    with x64():
        x = jnp.asarray(rng.permutation(np.prod(x.shape)).reshape(x.shape) * 0.01 + rng.random(x.shape) * 1e-3)
        y, ref_y, g, _ = jax.jit(both)(x, jnp.asarray(probe, jnp.float64))
        np.testing.assert_array_equal(y, ref_y)
        f = jax.jit(lambda v: jnp.sum(probe * ops.max_pool(v, *args)))
        numeric = finite_difference_grad(f, np.asarray(x), eps=1e-4, indices=random_indices(x.shape, 40))
        assert_grads_close(g, numeric, rtol=1e-6, atol=1e-9)


def test_max_pool_tie_goes_to_the_row_major_first_maximum():
    x = jnp.asarray([[0.0, 5.0], [5.0, 0.0]]).reshape(1, 2, 2, 1)
    args = _op_args((2, 2), (2, 2), ((0, 0), (0, 0)))
    g = jax.grad(lambda v: ops.max_pool(v, *args).sum())(x)
    np.testing.assert_array_equal(g.reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(g, jax.grad(lambda v: _lax_pool(v, (2, 2), (2, 2), ((0, 0), (0, 0))).sum())(x))
    # a window that overhangs the padding: -inf padding never wins over a real value
    x = -jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    args = _op_args((3, 3), (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(ops.max_pool(x, *args), _lax_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))))


RULE_RELUS = {"gradient": jax.nn.relu, "guided": guided_relu, "deconv": deconv_relu}


@pytest.mark.parametrize("rule", ["gradient", "guided", "deconv"])
@pytest.mark.parametrize("window, strides, padding, hw", [POOL_CASES[i] for i in (1, 2, 4)])
def test_relu_max_pool_equals_pool_of_the_rule_relu(rule, window, strides, padding, hw):
    rng = np.random.default_rng(7)
    args = _op_args(window, strides, padding)
    # ties, zeros and whole windows of negatives; a probe of both signs (the rules look at g's sign)
    t = jnp.asarray(rng.integers(-3, 3, (2,) + hw + (3,)), jnp.float32)
    ref_fn = lambda v: _lax_pool(RULE_RELUS[rule](v), window, strides, padding)
    probe = jnp.asarray(rng.integers(-4, 5, jax.eval_shape(ref_fn, t).shape), jnp.float32)

    def both(v, p):
        ours = lambda u: ops.relu_max_pool(u, *args, rule)
        return (ours(v), ref_fn(v), jax.grad(lambda u: jnp.sum(p * ours(u)))(v),
                jax.grad(lambda u: jnp.sum(p * ref_fn(u)))(v))
    y, ref_y, g, ref_g = jax.jit(both)(t, probe)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(g, ref_g)
    assert float(jnp.abs(g).max()) > 0
    if rule == "gradient":  # the true gradient where it exists (distinct, non-zero values)
        with x64():
            t = jnp.asarray(rng.permutation(t.size).reshape(t.shape) - t.size / 2 + 0.5)
            f = jax.jit(lambda v: jnp.sum(probe * ops.relu_max_pool(v, *args)))
            numeric = finite_difference_grad(f, np.asarray(t), eps=1e-3, indices=random_indices(t.shape, 40))
            assert_grads_close(jax.jit(jax.grad(f))(t), numeric, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- a fire-module model

class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1 -> ReLU -> [expand 1x1, expand 3x3] -> ReLU -> concat."""
    squeeze: int
    e1: int
    e3: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.squeeze, (1, 1), name="squeeze")(x))
        return jnp.concatenate([nn.relu(nn.Conv(self.e1, (1, 1), name="expand1x1")(x)),
                                nn.relu(nn.Conv(self.e3, (3, 3), name="expand3x3")(x))], axis=-1)


class FireNet(nn.Module):
    """strided RGB conv -> ReLU -> ceil-mode pool -> fire -> pool (of a concatenation) -> fire (its
    squeeze conv reads a pooled concatenation) -> 1x1 conv of a concatenation -> GAP -> dense.
    ``skip``: the first ReLU and the first fire's concatenation also feed the head directly (two
    consumers: the guided rule then must see both gradients)."""
    skip: bool = False

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(8, (3, 3), strides=2, padding="VALID", name="conv1")(x))
        x = nn.max_pool(a, (3, 3), (2, 2), padding=((0, 1), (0, 1)))
        f = Fire(4, 4, 4, name="fire2")(x)
        x = nn.max_pool(f, (3, 3), (2, 2), padding=((0, 1), (0, 1)))
        x = Fire(4, 5, 3, name="fire3")(x)
        y = nn.relu(nn.Conv(6, (1, 1), name="head_conv")(x)).mean((1, 2))
        if self.skip:
            y = y + nn.Dense(6, name="side")(jnp.concatenate([a.mean((1, 2)), f.mean((1, 2))], -1))
        return nn.Dense(5, name="fc")(y)


@functools.cache
def fire_model(skip: bool = False, seed: int = 0):
    """FireNet with random weights drawn in numpy from the parameter shapes (no init to compile):
    kernels of variance 1 / fan-in, small positive biases (most ReLUs on)."""
    module = FireNet(skip)
    shapes = jax.eval_shape(module.init, jax.random.key(seed), jnp.zeros((1, 23, 19, 3)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "kernel":
            return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), jnp.float32)
        return jnp.asarray(0.05 + 0.05 * rng.standard_normal(leaf.shape), jnp.float32)
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    return from_linen(module, variables, name="fire", preprocessing=TORCHVISION, input_size=(23, 19))


def _input(model, n=2, seed=1, hw=None):
    h, w = hw or model.input_hw((20, 18))
    return _normal((n, h, w, 3), seed)


def _value_and_grads(model, params, x, rule="gradient", k=3, wrt=(0, 1)):
    """(output, gradients of the sum of class k's scores w.r.t. ``wrt`` of (params, x)), jitted."""
    m = model.with_backward(rule)
    score = lambda p, v: jnp.sum(m.apply(p, v)[:, k])
    grads = lambda p, v: jax.grad(score, argnums=wrt)(p, v)
    return jax.jit(lambda p, v: (m.apply(p, v),) + (grads(p, v) if isinstance(wrt, tuple) else (grads(p, v),)))(
        params, x)


def _assert_close(a, b, rtol=2e-5):
    """Equal to float rounding, relative to the array's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.abs(b).max()), 1e-30)
    assert np.abs(a - b).max() <= rtol * scale, f"max |a - b| = {np.abs(a - b).max():.3g}, scale {scale:.3g}"


def test_fire_model_rewrite_is_what_the_docstring_says():
    model = fire_model()
    x = _input(model)
    fast = accelerate(model)
    names = _custom_names(lambda v: fast.apply(fast.params, v), x)
    assert names.count("relu_max_pool") == 1 + 2  # conv1's pool; fire2's pool: one per concatenated part
    # conv1, fire2, fire3 (its squeeze conv reads a pooled concatenation: one per part), head conv (ditto)
    assert "max_pool" not in names and names.count("conv") == 1 + 3 + (2 + 2) + 2
    assert "concatenate" not in _primitives(lambda v: fast.apply(fast.params, v), x)
    guided = fast.with_backward("guided")
    assert _custom_names(lambda v: guided.apply(guided.params, v), x).count("relu_max_pool") == 3
    # a guided ReLU with two consumers takes the rule on the sum of their gradients: not fused
    skip = accelerate(fire_model(skip=True)).with_backward("guided")
    assert _custom_names(lambda v: skip.apply(skip.params, v), x).count("relu_max_pool") == 0
    assert "reduce_window_max" not in _primitives(lambda v: fast.apply(fast.params, v), x)


def test_fire_model_values_and_gradients_equal_finite_differences():
    skip = True  # fused and unfused ReLU pools, concatenations pooled, convolved and read directly
    model = fire_model(skip)
    fast = accelerate(model)
    with x64():  # the rewritten float64 network against central differences
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), model.params)
        x = np.asarray(_input(model), np.float64)
        f = jax.jit(lambda v: fast.apply(params, v)[:, 2].sum())
        np.testing.assert_allclose(f(x), model.apply(params, jnp.asarray(x))[:, 2].sum(), rtol=1e-12)
        numeric = finite_difference_grad(f, x, eps=1e-6, indices=random_indices(x.shape, 30, seed=int(skip)))
        assert_grads_close(jax.jit(jax.grad(f))(x), numeric, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- any model

def _models(any_model, both_fires=False):
    """any_model, and with the bundled tiny one the fire-module models (skip: a ReLU and a
    concatenation with two consumers; without: every ReLU before a pool fused)."""
    if any_model.name != "tiny":
        return [any_model]
    return [any_model, fire_model(skip=True)] + ([fire_model()] if both_fires else [])


def test_rewrite_equals_the_function_on_any_model(any_model):
    for model in _models(any_model):
        x = _input(model, hw=(20, 18) if model.name != "resnet18" else (40, 36))
        fast = rewrite(model.apply)
        assert _custom_names(fast, model.params, x).count("conv") >= 2
        wrt = (0, 1) if model.name != "resnet18" else (1,)  # (ResNet's kernel gradients: slow to compile)
        out, *grads = _value_and_grads(model, model.params, x, wrt=wrt)
        score = lambda p, v, f=fast: jnp.sum(f(p, v)[:, 3])
        fast_out, *fast_grads = jax.jit(
            lambda p, v, f=fast, s=score, a=wrt: (f(p, v),) + jax.grad(s, argnums=a)(p, v))(model.params, x)
        _assert_close(fast_out, out)
        _assert_close(fast_grads[-1], grads[-1])  # the input gradient
        for a, b in zip(jax.tree_util.tree_leaves(fast_grads[:-1]), jax.tree_util.tree_leaves(grads[:-1])):
            _assert_close(a, b, rtol=5e-5)


@pytest.mark.parametrize("rule", ["guided", "deconv"])
def test_accelerated_backward_rules_equal_the_interface(any_model, rule):
    for model in _models(any_model, both_fires=True):
        x = _input(model, hw=(20, 18) if model.name != "resnet18" else (40, 36))
        out, gx = _value_and_grads(model, model.params, x, rule, wrt=1)
        fast = accelerate(model)
        assert fast.with_backward(rule) is fast.with_backward(rule)
        fast_out, fast_gx = _value_and_grads(fast, fast.params, x, rule, wrt=1)
        _assert_close(fast_out, out)
        _assert_close(fast_gx, gx, rtol=1e-4)  # a mask (g > 0) may flip where g rounds across 0
        assert float(jnp.abs(fast_gx).max()) > 0


def test_layer_gradients_and_activations_of_the_accelerated_model(any_model):
    model, fast = any_model, accelerate(any_model)
    layer = model.feature_layer
    x = _input(model, hw=(20, 18) if model.name != "resnet18" else (40, 36))
    a = model.activation(model.params, x, layer)
    np.testing.assert_allclose(fast.activation(fast.params, x, layer), a, rtol=1e-5, atol=1e-5)
    grad = lambda m: jax.jit(jax.grad(lambda v: m.inject(m.params, x, layer, v)[:, 1].sum()))(a)
    _assert_close(grad(fast), grad(model))


def test_smoothgrad_paths_and_batch_equal_the_plain_model():
    model = fire_model(skip=True)
    fast = accelerate(model)
    x = _input(model, n=3)
    noise = 0.3 * _normal((2,) + x.shape, 4)

    def grads(m, mapper):
        g = jax.grad(lambda v: m.apply(m.params, v)[:, 1].sum())
        return jax.jit(lambda e: mapper(lambda n: g(x + n), e))(noise)
    for mapper in (jax.lax.map, lambda f, e: jax.vmap(f)(e)):  # SmoothGrad's two ways of batching
        _assert_close(grads(fast, mapper), grads(model, mapper))
    grad = jax.jit(jax.grad(lambda v: fast.apply(fast.params, v)[:, 1].sum()))
    g_batch = grad(x)
    for i in range(3):
        _assert_close(g_batch[i:i + 1], grad(x[i:i + 1]), rtol=1e-6)


def test_a_model_without_convolutions_or_relus():
    model = apply_fn_model()
    fast = accelerate(model)
    x = _input(model, hw=(12, 10))
    want = model.apply(model.params, x)  # float32 sums: a small logit carries the large ones' rounding
    np.testing.assert_allclose(fast.apply(fast.params, x), want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    np.testing.assert_allclose(jax.grad(lambda v: fast.apply(fast.params, v).sum())(x),
                               jax.grad(lambda v: model.apply(model.params, v).sum())(x), rtol=1e-5, atol=1e-8)
    for m in (model, fast):
        with pytest.raises(JaxvizError, match="needs ReLU"):
            m.with_backward("guided").apply(m.params, x)
    with pytest.raises(JaxvizError, match="unknown backward rule"):
        fast.with_backward("guidd")


# --------------------------------------------------------------------------- what a jaxpr may hold

@jax.custom_jvp
def softplus_conv(v, k):
    """A convolution inside a custom derivative: its own rule must be kept (left alone)."""
    return jax.nn.softplus(lax.conv_general_dilated(v, k, (1, 1), "SAME", dimension_numbers=NHWC))


@softplus_conv.defjvp
def _softplus_conv_jvp(primals, tangents):
    return jax.jvp(lambda v, k: jax.nn.softplus(lax.conv_general_dilated(v, k, (1, 1), "SAME", dimension_numbers=NHWC)),
                   primals, tangents)


def _plain_fn(params, x):
    """jit-ed block with ReLU6, a scan of conv + ReLU layers, a custom_jvp around a conv, a dilated
    and a grouped convolution (left alone), a max(x, 0) ReLU before a pool."""
    k1, k2, kd, kg, kc = params

    @jax.jit
    def block(v):
        return jax.nn.relu6(lax.conv_general_dilated(v, k1, (1, 1), "SAME", dimension_numbers=NHWC))

    y = block(x)
    y, _ = lax.scan(lambda c, k: (jax.nn.relu(lax.conv_general_dilated(c, k, (1, 1), "SAME",
                                                                     dimension_numbers=NHWC)), None), y, k2)
    y = jnp.maximum(lax.conv_general_dilated(y, kd, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC), 0)
    y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    y = jax.nn.relu(lax.conv_general_dilated(y, kg, (1, 1), "SAME", feature_group_count=2, dimension_numbers=NHWC))
    return (y.mean((1, 2, 3)) + softplus_conv(x, kc).mean((1, 2, 3)))


def _plain_params(seed=0):
    rng = np.random.default_rng(seed)  # (numpy: jax.random would compile per shape)
    return tuple(jnp.asarray(scale * rng.standard_normal(shape), jnp.float32) for scale, shape in (
        (0.5, (3, 3, 3, 4)), (0.4, (2, 3, 3, 4, 4)), (0.4, (3, 3, 4, 4)), (0.5, (3, 3, 2, 6)), (0.5, (3, 3, 3, 2))))


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("rule", ["gradient", "guided", "deconv"])
def test_pjit_scan_custom_jvp_relu6_and_unsupported_convolutions(rule):
    params, x = _plain_params(), _normal((2, 9, 7, 3), 1)
    fast = rewrite(_plain_fn, rule, argnums=(1,))
    ref = with_backward_rule(_plain_fn, rule, argnums=(1,))
    # the dilated and the grouped convolutions (and the custom_jvp's) are still lax's
    convs = [e for e in jax.make_jaxpr(fast)(params, x).jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert sorted((tuple(e.params["rhs_dilation"]), e.params["feature_group_count"]) for e in convs) == [
        ((1, 1), 2), ((2, 2), 1)]
    np.testing.assert_allclose(jax.jit(fast)(params, x), jax.jit(ref)(params, x), rtol=1e-6)
    g = jax.jit(jax.grad(lambda v: fast(params, v).sum()))(x)
    _assert_close(g, jax.jit(jax.grad(lambda v: ref(params, v).sum()))(x), rtol=1e-5)


def test_a_relu_inside_a_checkpoint_takes_the_rule():
    params, x = _plain_params(), _normal((1, 8, 8, 3), 2)

    def f(p, v):
        return jax.nn.relu(lax.conv_general_dilated(v, p[0], (1, 1), "SAME", dimension_numbers=NHWC)).sum()
    g = jax.grad(lambda v: rewrite(jax.checkpoint(f), "guided")(params, v))(x)
    _assert_close(g, jax.grad(lambda v: rewrite(f, "guided")(params, v))(x))
    _assert_close(g, jax.grad(lambda v: with_backward_rule(f, "guided")(params, v))(x))


def test_rewrite_refuses_an_unknown_rule_and_a_model_without_relus():
    with pytest.raises(JaxvizError, match="unknown backward rule"):
        rewrite(lambda v: v, "guidedd")
    with pytest.raises(JaxvizError, match="needs ReLU"):
        rewrite(lambda v: jnp.tanh(v) * 2, "deconv")(jnp.ones((1, 4, 4, 3)))


# --------------------------------------------------------------------------- the real SqueezeNet 1.1

@pytest.mark.slow
def test_squeezenet_accelerated_gradients_equal_the_plain_network(squeezenet):
    fast = accelerate(squeezenet)
    x = _normal((2, 64, 64, 3), 0)
    names = _custom_names(lambda v: fast.apply(fast.params, v), x)
    assert names.count("relu_max_pool") == 1 + 2 + 2 and "max_pool" not in names
    for rule in ("gradient", "guided"):
        out, gx = _value_and_grads(squeezenet, squeezenet.params, x, rule, k=281, wrt=1)
        fast_out, fast_gx = _value_and_grads(fast, fast.params, x, rule, k=281, wrt=1)
        _assert_close(fast_out, out, rtol=1e-5)
        _assert_close(fast_gx, gx, rtol=1e-4)
        r = np.corrcoef(np.ravel(fast_gx), np.ravel(gx))[0, 1]
        assert r > 0.99999, r


_CALLS: list = []


class _CountingCNN(nn.Module):
    """Counts how often its Python forward runs (once per trace) in ``_CALLS``."""

    @nn.compact
    def __call__(self, x):
        _CALLS.append(x.shape)
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def test_accelerated_pass_is_traced_once_per_shape_and_reused():
    """A technique runs the same pass several times at one shape (a target's features, inside the
    step's gradient, the final loss terms): the rewrite reuses the first trace's jaxpr (jit's own
    cache) instead of tracing the network again; another shape, another pass or x64 traces anew,
    and the values are the plain model's."""
    module = _CountingCNN()
    model = from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3))), name="counting")
    fast = accelerate(model)
    fast.resolve_layer("conv")  # (the model's layer probe traces once, at its own size)
    x = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
    _CALLS.clear()
    first = jax.jit(lambda p, x: fast.apply(p, x))(fast.params, x)
    grad = jax.grad(lambda x: fast.apply(fast.params, x).sum())(x)  # another program, same pass and shape
    eager = fast.apply(fast.params, x)
    assert len(_CALLS) == 1, _CALLS
    fast.apply(fast.params, x[:1])                   # another shape
    fast.activations(fast.params, x, ["conv"])       # another pass (captures, stops early)
    assert len(_CALLS) == 3, _CALLS
    with jax.enable_x64(True):
        fast.apply(fast.params, x)                   # the same types, another configuration
    assert len(_CALLS) == 4, _CALLS
    np.testing.assert_allclose(first, model.apply(model.params, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager, first, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, jax.grad(lambda x: model.apply(model.params, x).sum())(x), rtol=1e-4, atol=1e-6)
