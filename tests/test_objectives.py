"""Objectives: true gradients (finite differences, float64), the DeepDream identity, composition,
the empty-layer refusal; on the bundled tiny CNN (the any-model matrix is in
tests/test_optimise_any_model.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import objectives as obj
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64
from tests.conftest import make_tiny_model


def _fd_check(objective, x, count=25, seed=0):
    f = lambda z: float(jnp.sum(objective(jnp.asarray(z), None)))
    analytic = jax.grad(lambda z: jnp.sum(objective(z, None)))(x)
    numeric = finite_difference_grad(f, np.asarray(x), eps=1e-6, indices=random_indices(x.shape, count, seed))
    assert_grads_close(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.fixture()
def tiny64():
    with x64():
        model = make_tiny_model(0)
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), model.params)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 16, 3)), jnp.float64)
        yield model, params, x


def test_class_score_with_l2_gradient(tiny64):
    model, params, x = tiny64
    with x64():
        _fd_check(-obj.class_score(model, params, jnp.array([1, 3])) + 0.1 * obj.l2(), x)
        _fd_check(obj.class_score(model, params, 2, score="logprob"), x, seed=1)


@pytest.mark.parametrize("beta", [2.0, 1.5, 1.0])
def test_tv_gradient(beta):
    with x64():
        x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 7, 3)), jnp.float64)
        _fd_check(obj.tv(beta), x, count=40)


def test_tv_exact_values():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(2.0)
    # forward differences at the top-left 2x2 pixels: (0,0): 0; (0,1): dy=2; (1,0): dx=2; (1,1): dy=dx=-2
    np.testing.assert_allclose(obj.total_variation(x, 2.0), [4 + 4 + 8])
    np.testing.assert_allclose(obj.total_variation(x, 1.0), [2 + 2 + np.sqrt(8)], rtol=1e-6)


def test_feature_match_gradient(tiny64):
    model, params, x = tiny64
    with x64():
        x0 = x[::-1] * 0.5
        _fd_check(obj.feature_match(model, params, "features.4", x0), x)
        _fd_check(obj.feature_match(model, params, "features.1", x0, normalize=False), x, seed=2)


def test_feature_match_zero_at_reference_and_normalised(tiny64):
    model, params, x = tiny64
    with x64():
        f = obj.feature_match(model, params, "features.4", x)
        np.testing.assert_allclose(f(x), 0.0, atol=1e-20)
        # normalised: matching the zero activation costs exactly 1 (relative error 100%)
        zero_acts = jnp.zeros_like(model.activation(params, x, "features.4"))
        g = obj.feature_distance(model, params, "features.4", zero_acts, normalize=False)
        a = model.activation(params, x, "features.4")
        np.testing.assert_allclose(g(x), jnp.sum(a * a, axis=(1, 2, 3)), rtol=1e-12)


def test_deepdream_gradient_and_identity(tiny64):
    model, params, x = tiny64
    with x64():
        _fd_check(obj.deepdream(model, params, "features.4"), x)
        # gradient of ½Σf² w.r.t. the layer's activation is the activation itself
        acts = model.activation(params, x, "features.4")
        g = jax.grad(lambda a: jnp.sum(0.5 * jnp.sum(jnp.square(a).reshape(a.shape[0], -1), 1)))(acts)
        np.testing.assert_array_equal(g, acts)
        # and through the objective's own code path: d/dx = J^T f  (vjp of the layer map with f)
        _, vjp = jax.vjp(lambda z: model.activation(params, z, "features.4"), x)
        via_layer = vjp(acts)[0]
        direct = jax.grad(lambda z: jnp.sum(obj.deepdream(model, params, "features.4")(z)))(x)
        np.testing.assert_allclose(direct, via_layer, rtol=1e-12, atol=1e-14)


def test_channel_and_neuron(tiny64):
    model, params, x = tiny64
    with x64():
        acts = model.activation(params, x, "features.4")
        np.testing.assert_allclose(obj.channel(model, params, "features.4", jnp.array([2, 7]))(x),
                                   [acts[0, :, :, 2].mean(), acts[1, :, :, 7].mean()])
        # non-square map: (y, x) = (1, 6) exists only if x and y are not swapped (6 x 8 map)
        np.testing.assert_allclose(obj.neuron(model, params, "features.4", 3, 1, 6)(x), acts[:, 1, 6, 3])
        _fd_check(obj.channel(model, params, "features.4", 5), x)


def test_composition_arithmetic(tiny64):
    model, params, x = tiny64
    with x64():
        a = obj.class_score(model, params, 1)
        b = obj.l2()
        combo = 2.0 * a - b / 4.0 + 1.0 - (-a) * 0.5
        np.testing.assert_allclose(combo(x), 2 * a(x) - b(x) / 4 + 1 + 0.5 * a(x), rtol=1e-12)
        np.testing.assert_allclose((a * b)(x), a(x) * b(x), rtol=1e-12)
        np.testing.assert_allclose((3.0 - a)(x), 3.0 - a(x), rtol=1e-12)


def test_user_objective_composes_with_builtin_ones(tiny64):
    """``Objective(fn)`` of a user's fn(x, keys) mixes with the pure built-ins (data objectives)."""
    model, params, x = tiny64
    with x64():
        mine = obj.Objective(lambda z, k: jnp.sum(z.reshape(z.shape[0], -1), 1), "sum")
        combo = mine - 0.5 * obj.class_score(model, params, jnp.array([0, 4]))
        expected = jnp.sum(x.reshape(2, -1), 1) - 0.5 * model.apply(params, x)[jnp.arange(2), jnp.array([0, 4])]
        np.testing.assert_allclose(combo(x), expected, rtol=1e-12)
        np.testing.assert_allclose(obj.evaluate(combo, x), expected, rtol=1e-12)
        # the same structure gives the same pure function (the engine's cache key)
        again = mine - 0.5 * obj.class_score(model, params, jnp.array([1, 2]))
        assert again.pure_fn is combo.pure_fn


def test_objectives_resolve_layers_with_clear_errors():
    from jaxviz.errors import JaxvizError
    model = make_tiny_model()
    with pytest.raises(JaxvizError, match="unknown layer"):
        obj.channel(model, model.params, "features.44", 0)
    with pytest.raises(JaxvizError, match="unknown score"):
        obj.class_score(model, model.params, 0, score="margin")


def test_require_nonempty_names_the_smallest_size():
    """A layer whose output is empty at the size is refused with the smallest size that works
    (the tiny CNN's features.4 follows a 2x2 max-pool: empty at 1 px, fine from 2 px)."""
    from jaxviz.errors import JaxvizError
    model = make_tiny_model()
    obj.require_nonempty(model, ("features.4",), (2, 2))
    with pytest.raises(JaxvizError, match="features.4 .*empty at 1x1 px.*at least 2x2 px"):
        obj.require_nonempty(model, ("features.4",), (1, 1))
    with pytest.raises(JaxvizError, match="empty layers at 1x9 px"):
        obj.require_nonempty(model, None, (1, 9))


def test_num_outputs_from_the_probe_or_by_tracing_the_output():
    """``num_outputs`` reads the model's probe for its own parameters and traces the output for
    others; a model whose probe stops early (a layer returning a non-array) is traced too."""
    import flax.linen as nn

    from jaxviz.interface import from_linen

    class Tagged(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(x), "features"

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            y, _ = Tagged(name="tagged")(x.mean(axis=(1, 2)))
            return nn.Dense(10, name="head")(y)

    x = jnp.ones((1, 8, 8, 3))
    net = Net()
    model = from_linen(net, net.init(jax.random.key(0), x), input_size=8)
    copied = jax.tree_util.tree_map(lambda a: a, model.params)
    assert obj.num_outputs(model, model.params, x) == obj.num_outputs(model, copied, x) == 10
    tiny = make_tiny_model(0)
    assert obj.num_outputs(tiny, tiny.params, jnp.ones((2, 16, 12, 3))) == tiny.output_shape((16, 12))[0]
