"""The model interface on every adapter: activations, injection, backward rules, facts, errors."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.interface import TORCHVISION, as_model, from_apply_fn, from_linen, with_backward_rule
from jaxviz.interface.backward import (
    deconv_relu,
    deconv_relu6,
    guided_relu,
    guided_relu6,
    positive_part,
    relu_kind,
)
from tests.conftest import make_tiny_model
from tests.user_models import LinenCNN, TwoConvCNN, apply_fn_model, linen_model, nnx_model

SIGNS = jnp.array([1.0, -1.0, 0.5, -2.0, 1.0, -0.5, 1.5])
X = np.random.default_rng(0).normal(size=(2, 16, 20, 3)).astype(np.float32)  # non-square, batch 2


def test_linen_activations_equal_flax_capture_intermediates():
    model = linen_model()
    _, state = model.module.apply(model.params, X, capture_intermediates=True, mutable=["intermediates"])
    acts = model.activations(model.params, X, ["stem", "block/conv1", "block"])
    inter = state["intermediates"]
    np.testing.assert_array_equal(acts["stem"], inter["stem"]["__call__"][0])
    np.testing.assert_array_equal(acts["block/conv1"], inter["block"]["conv1"]["__call__"][0])
    np.testing.assert_array_equal(acts["block"], inter["block"]["__call__"][0])
    assert model.resolve_layer("block.conv1") == "block/conv1"  # either separator


def test_nnx_activations_equal_a_hand_run():
    model = nnx_model()
    from flax import nnx
    copy = nnx.merge(model.graphdef, model.params)
    copy.eval()
    stem = copy.stem(jnp.asarray(X))
    first = jax.nn.relu(copy.layers[0](nnx.relu(copy.bn(stem))))
    acts = model.activations(model.params, X, ["stem", "layers.0"])
    np.testing.assert_allclose(acts["stem"], stem, rtol=1e-6)
    np.testing.assert_allclose(jax.nn.relu(acts["layers.0"]), first, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.apply(model.params, X), copy(jnp.asarray(X)), rtol=1e-6)


@pytest.mark.parametrize("make, layer", [(linen_model, "block"), (nnx_model, "layers.1"),
                                         (make_tiny_model, "features.4")])
def test_injecting_the_activation_reproduces_the_output(make, layer):
    model = make()
    acts = model.activation(model.params, X, layer)
    np.testing.assert_allclose(model.inject(model.params, X, layer, acts), model.apply(model.params, X),
                               rtol=1e-6, atol=1e-6)
    # and injecting something else changes it: the injected array is really used
    assert not np.allclose(model.inject(model.params, X, layer, acts * 2), model.apply(model.params, X))


def test_gradient_at_a_layer_equals_finite_differences_of_the_injected_array():
    model = linen_model()
    acts = model.activation(model.params, X, "block")
    f = jax.jit(lambda a: model.inject(model.params, X, "block", a)[:, 2].sum())
    g = jax.grad(f)(acts)
    rng = np.random.default_rng(1)
    for flat in rng.choice(acts.size, 6, replace=False):
        e = np.zeros(acts.size, np.float32)
        e[flat] = 1e-2
        e = e.reshape(acts.shape)
        numeric = (f(acts + e) - f(acts - e)) / 2e-2
        np.testing.assert_allclose(g.reshape(-1)[flat], numeric, rtol=2e-2, atol=1e-4)


def test_activations_stop_early_and_work_under_jit_and_vmap():
    model = linen_model()
    jitted = jax.jit(lambda p, x: model.activation(p, x, "stem"))(model.params, X)
    per_image = jax.vmap(lambda x: model.activation(model.params, x[None], "stem")[0])(jnp.asarray(X))
    np.testing.assert_allclose(jitted, per_image, rtol=1e-6, atol=1e-6)
    # stopping after the stem: the head never runs, so nothing after it is in the program
    jaxpr = jax.make_jaxpr(lambda x: model.activation(model.params, x, "stem"))(X)
    assert "dot_general" not in str(jaxpr)


def test_layer_names_shapes_and_facts():
    model = linen_model()
    assert model.layer_names == ("stem", "block/conv1", "block/bn", "block/conv2", "block", "head")
    assert model.layer_shapes((16, 20))["block"] == (8, 10, 8)
    assert model.num_classes == 5 and model.feature_layer == "block"
    lo, hi = model.valid_range()
    np.testing.assert_allclose(lo, TORCHVISION(jnp.zeros((1, 1, 1, 3))).reshape(3), rtol=1e-6)
    assert hi[0] > lo[0]
    assert model.smallest_input("block") == 1


def test_positive_part_equals_max_with_zero_including_special_values():
    special = [0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, np.inf, -np.inf, 2.5, -2.5]
    for dtype in (np.float32, np.float64):
        g = np.concatenate([np.asarray(special, dtype), np.random.default_rng(0).normal(size=200).astype(dtype)])
        with jax.enable_x64(dtype == np.float64):
            out = np.asarray(positive_part(jnp.asarray(g)))
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, np.maximum(g, 0))
        assert not np.signbit(out).any()  # -0.0 and negatives give +0.0
    assert np.isnan(np.asarray(positive_part(jnp.asarray([np.nan], jnp.float32))))[0]  # NaN passes, as max does
    half = jnp.asarray([-1.5, 0.0, 2.0], jnp.bfloat16)  # other dtypes: plain maximum
    np.testing.assert_array_equal(np.asarray(positive_part(half), np.float32), [0.0, 0.0, 2.0])


def test_relu_rules_backward_equal_the_formulas_by_hand():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(scale=4.0, size=(400,)), jnp.float32)  # some above 6 for ReLU6
    g = jnp.asarray(rng.normal(size=(400,)), jnp.float32)
    xs, gs = np.asarray(x), np.asarray(g)
    zero = np.zeros_like(gs)
    want = {guided_relu: np.where((xs > 0) & (gs > 0), gs, zero),
            guided_relu6: np.where((xs > 0) & (xs < 6) & (gs > 0), gs, zero),
            deconv_relu: np.where(gs > 0, gs, zero), deconv_relu6: np.where(gs > 0, gs, zero)}
    for fn, expected in want.items():
        out, vjp = jax.vjp(fn, x)
        np.testing.assert_array_equal(out, np.clip(xs, 0, 6 if fn in (guided_relu6, deconv_relu6) else None))
        np.testing.assert_array_equal(vjp(g)[0], expected)


def test_gradients_of_guided_and_deconvnet_maps_match_finite_differences():
    """A guided / deconvnet map differentiated again with respect to the parameters (attacks on
    explanations, explanation regularisers, sanity checks): the rules' positive part carries max's
    derivative; its bit operations alone differentiated to 0 and these gradients were wrong."""
    import jaxviz
    np.testing.assert_array_equal(jax.grad(lambda v: positive_part(v).sum())(jnp.asarray([2.0, -1.0, 0.0])),
                                  [1.0, 0.0, 0.0])

    with jax.enable_x64(True):
        module = TwoConvCNN()
        variables = module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3), jnp.float64))
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
        model = from_linen(module, variables, input_size=12)
        x = jax.random.uniform(jax.random.key(1), (2, 12, 14, 3), jnp.float64)
        index = jnp.asarray([1, 3])
        direction = jax.tree_util.tree_map(
            lambda a: 0.01 * jax.random.normal(jax.random.key(3), a.shape, a.dtype), model.params)
        for technique in (jaxviz.guided_backprop, jaxviz.deconvnet):
            def loss(params):
                return (technique(model, params, x, index=index) ** 2).sum()
            grads = jax.grad(loss)(model.params)
            along = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(grads),
                                                      jax.tree_util.tree_leaves(direction)))
            shifted = [jax.tree_util.tree_map(lambda a, d: a + s * d, model.params, direction) for s in (1e-6, -1e-6)]
            finite = (loss(shifted[0]) - loss(shifted[1])) / 2e-6
            assert abs(float(along)) > 1e-9
            np.testing.assert_allclose(float(along), float(finite), rtol=1e-4)


def test_guided_rule_covers_relus_written_as_jnp_clip():
    """jnp.clip(x, 0) and jnp.clip(x, 0, 6) (the MobileNet idiom) take the rule too: a model mixing
    them with nn.relu got the rule on the nn.relu only, silently (57 % off the fully guided map)."""
    import jaxviz
    from jaxviz.accel import accelerate
    from jaxviz.saliency import guided_gradients

    class Net(nn.Module):
        relu: Any = nn.relu
        relu6: Any = staticmethod(lambda z: jnp.clip(z, 0, 6))
        relu0: Any = staticmethod(lambda z: jnp.clip(z, 0.0))

        @nn.compact
        def __call__(self, x):
            x = self.relu(nn.Conv(8, (3, 3), name="conv1")(x))
            x = self.relu6(nn.Conv(8, (3, 3), strides=2, name="conv2")(x) * 4.0)  # some above 6
            x = self.relu0(nn.Conv(8, (3, 3), name="conv3")(x))
            return nn.Dense(5, name="head")(x.mean((1, 2)))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    index = jnp.asarray([1, 3])
    variables = Net().init(jax.random.key(0), x[:1])
    by_hand = Net(guided_relu, guided_relu6, guided_relu)
    want = jax.grad(lambda z: by_hand.apply(variables, z)[jnp.arange(2), index].sum())(x)
    model = jaxviz.from_linen(Net(), variables, input_size=16)
    for m in (model, accelerate(model)):
        np.testing.assert_allclose(guided_gradients(m, m.params, x, index=index), want, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(want)).max() > 0
    kinds = {"relu6": [lambda z: jnp.clip(z, 0, 6), lambda z: jnp.clip(z, min=0, max=6.0)],
             "relu": [lambda z: jnp.clip(z, 0), lambda z: z.clip(0.0)],
             None: [lambda z: jnp.clip(z, -1.0, 6.0), lambda z: jnp.clip(z, 0, 5), lambda z: jnp.clip(z, None, 0),
                    lambda z: jnp.clip(z, max=0), lambda z: z.clip(max=6)]}  # min(z, 0) is not a ReLU
    for kind, forms in kinds.items():
        for form in forms:
            assert relu_kind(jax.make_jaxpr(form)(jnp.ones(3)).jaxpr.eqns[0]) == kind
    z = jnp.linspace(-3.0, 8.0, 12)
    upper = lambda v: jnp.sum(jnp.clip(v, None, 0) * jnp.arange(12.0))  # noqa: E731
    with pytest.raises(JaxvizError, match="needs ReLU"):  # no ReLU in it: its values are not touched
        with_backward_rule(upper, "guided")(z)


RELU6_FORMS = {"min-max": lambda z: jnp.minimum(jnp.maximum(z, 0), 6),
               "max-min": lambda z: jnp.maximum(jnp.minimum(z, 6.0), 0.0),
               "six-first": lambda z: jnp.minimum(6, jnp.maximum(0.0, z)),
               "relu-min": lambda z: jnp.minimum(jax.nn.relu(z), 6),
               "clip-min": lambda z: jnp.minimum(jnp.clip(z, 0), 6),
               "max-clip": lambda z: jnp.clip(jnp.maximum(z, 0), max=6),
               "min-relu": lambda z: nn.relu(jnp.minimum(z, 6))}


@pytest.mark.parametrize("form", list(RELU6_FORMS))
def test_relu6_written_with_minimum_and_maximum_takes_the_relu6_rule(form):
    """jnp.minimum(jnp.maximum(x, 0), 6) (and a ReLU in another form then a min of 6) was replaced
    as a ReLU followed by an ordinary min: the deconvnet map also zeroed the signal where x > 6
    (ReLU6's deconvnet rule passes it)."""
    import jaxviz
    from jaxviz.accel import accelerate
    from jaxviz.saliency import deconvnet_gradients, guided_gradients
    written = RELU6_FORMS[form]

    class Net(nn.Module):
        relu6: Any = staticmethod(written)

        @nn.compact
        def __call__(self, x):
            x = self.relu6(nn.Conv(8, (3, 3), name="conv1")(x) * 8.0)  # many above 6
            x = self.relu6(nn.Conv(8, (3, 3), strides=2, name="conv2")(x))
            return nn.Dense(5, name="head")(x.mean((1, 2)))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    index = jnp.asarray([1, 3])
    variables = Net().init(jax.random.key(0), x[:1])
    model = jaxviz.from_linen(Net(), variables, input_size=16)
    for method, relu6 in ((deconvnet_gradients, deconv_relu6), (guided_gradients, guided_relu6)):
        by_hand = Net(relu6)
        want = jax.grad(lambda z: by_hand.apply(variables, z)[jnp.arange(2), index].sum())(x)
        assert np.abs(np.asarray(want)).max() > 0
        for m in (model, accelerate(model)):
            np.testing.assert_allclose(method(m, m.params, x, index=index), want, rtol=1e-5, atol=1e-7)
    # the ReLU's output used elsewhere too: a ReLU and a min, as written
    def both(w, z):
        h = jnp.maximum(z * w, 0)
        return jnp.sum(jnp.minimum(h, 6) + h * 0.5)
    z = jnp.linspace(-3.0, 9.0, 8)
    got = jax.grad(with_backward_rule(both, "deconv"), argnums=1)(1.0, z)
    expected = jax.grad(lambda z: jnp.sum(jnp.minimum(deconv_relu(z), 6) + deconv_relu(z) * 0.5))(z)
    np.testing.assert_allclose(got, expected)


def test_a_relu6_of_a_constant_is_left_alone():
    """min(relu(2.0), 6) of a Python constant was paired as a ReLU6 without an input: StopIteration."""
    def f(x):
        gate = jnp.minimum(jax.nn.relu(2.0), 6.0)
        return jnp.sum(jax.nn.relu(x) * gate)
    z = jnp.array([-1.0, 1.0, 7.0])
    for rule, want in (("guided", [0.0, 2.0, 2.0]), ("deconv", [2.0, 2.0, 2.0])):
        np.testing.assert_allclose(jax.grad(with_backward_rule(f, rule))(z), want)


def test_an_integer_clamp_is_not_a_relu():
    """min(max(q, 0), 6) of an int32 index was taken for a ReLU6 and replaced by a float one: NaN
    lookups and dtype errors in the forward pass of a guided model."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16)) * 4, jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8)), jnp.float32)
    table = jnp.arange(7.0) ** 2

    def f(x):
        h = x @ w
        bucket = jnp.minimum(jnp.maximum(jnp.round(h).astype(jnp.int32), 0), 6)
        clipped = jnp.clip(jnp.round(h).astype(jnp.int32), 0, 6)
        return (jnp.take(table, bucket) * (clipped * 2).astype(jnp.float32) * jax.nn.relu(h)).sum()
    for rule in ("guided", "deconv"):
        np.testing.assert_allclose(with_backward_rule(f, rule)(x), f(x), rtol=1e-6)


def test_guided_rule_replaces_plain_relu_calls_and_equals_the_rule_by_hand():
    def net(w, x):  # jax.nn.relu, flax's relu and jnp.maximum, one inside a jit and a scan
        h = jax.jit(jax.nn.relu)(x * w[0])
        h = nn.relu(h - 0.3) + jnp.maximum(h * w[1], 0.0)

        def body(c, _):
            return jax.nn.relu(c * w[2] - 0.1), None
        h, _ = jax.lax.scan(body, h, None, length=2)
        return h @ SIGNS  # mixed signs: the rules differ from the gradient

    def by_hand(w, x, relu):
        h = relu(x * w[0])
        h = relu(h - 0.3) + relu(h * w[1])
        for _ in range(2):
            h = relu(h * w[2] - 0.1)
        return h @ SIGNS

    w = jnp.array([1.3, -0.7, 0.9])
    x = jnp.asarray(np.random.default_rng(2).normal(size=(7,)), jnp.float32)
    for rule, relu in (("guided", guided_relu), ("deconv", deconv_relu)):
        fn = with_backward_rule(net, rule)
        np.testing.assert_allclose(fn(w, x), net(w, x), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(fn, 1)(w, x), jax.grad(lambda x: by_hand(w, x, relu))(x), rtol=1e-6)
        assert not np.allclose(jax.grad(fn, 1)(w, x), jax.grad(net, 1)(w, x))


def test_guided_rule_reaches_relus_inside_jax_checkpoint():
    """A ReLU inside ``jax.checkpoint`` (rematerialisation, common in large user models) gets the
    rule too: the checkpointed body is inlined."""
    def net(w, x):
        h = jax.checkpoint(lambda v: jax.nn.relu(v * w[0]) - 0.2)(x)
        return jax.nn.relu(h * w[1]) @ SIGNS

    def by_hand(w, x, relu):
        return relu((relu(x * w[0]) - 0.2) * w[1]) @ SIGNS

    w = jnp.array([1.3, -0.7])
    x = jnp.asarray(np.random.default_rng(5).normal(size=(7,)), jnp.float32)
    for rule, relu in (("guided", guided_relu), ("deconv", deconv_relu)):
        fn = with_backward_rule(net, rule)
        np.testing.assert_allclose(fn(w, x), net(w, x), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(fn, 1)(w, x), jax.grad(lambda x: by_hand(w, x, relu))(x), rtol=1e-6)
        assert not np.allclose(jax.grad(fn, 1)(w, x), jax.grad(net, 1)(w, x))


def test_guided_on_user_models_equals_hand_rule_on_a_linen_model():
    model = linen_model()
    guided = model.with_backward("guided")
    assert guided is model.with_backward("guided")  # cached: one compile as a static argument
    g = jax.grad(lambda x: guided.apply(guided.params, x)[:, 1].sum())(jnp.asarray(X))

    class HandGuided(LinenCNN):  # the same network written with guided ReLUs by hand
        pass
    # rewrite flax's relu inside the module by swapping the function itself
    import tests.user_models as um
    saved = um.nn.relu
    try:
        um.nn.relu = guided_relu
        hand = jax.grad(lambda x: um.LinenCNN().apply(model.params, x)[:, 1].sum())(jnp.asarray(X))
    finally:
        um.nn.relu = saved
    np.testing.assert_allclose(g, hand, rtol=1e-5, atol=1e-7)
    for make in (nnx_model, make_tiny_model):
        m = make().with_backward("deconv")
        assert np.isfinite(np.asarray(jax.grad(lambda x: m.apply(m.params, x).sum())(jnp.asarray(X)))).all()


def test_plain_apply_fn_model_says_what_it_cannot_do():
    model = apply_fn_model()
    assert model.apply(model.params, X).shape == (2, 5) and model.num_classes == 5
    with pytest.raises(JaxvizError, match="without named layers"):
        model.activation(model.params, X, "conv")
    relu_free = from_apply_fn(lambda p, x: x.mean((1, 2)) @ p, jnp.ones((3, 4)))
    with pytest.raises(JaxvizError, match="needs ReLU"):
        relu_free.with_backward("guided").apply(relu_free.params, X)


def test_unknown_layer_lists_close_names_and_bound_apply_maps_back():
    model = linen_model()
    with pytest.raises(JaxvizError, match="did you mean block/conv1"):
        model.resolve_layer("blok/conv1")
    assert as_model(model.apply) is model
    with pytest.raises(JaxvizError, match="backward rule"):
        model.with_backward("hooks")


def test_a_module_called_twice_is_refused_as_a_layer():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            conv = nn.Conv(3, (3, 3), name="shared")
            return conv(jax.nn.relu(conv(x))).mean((1, 2))
    module = Shared()
    model = from_linen(module, module.init(jax.random.key(0), X))
    with pytest.raises(JaxvizError, match="runs more than once"):
        model.activation(model.params, X, "shared")


def test_layer_params_and_replacing_them():
    for model, layer in ((linen_model(), "block/conv1"), (nnx_model(), "layers.0"), (make_tiny_model(), "features.3")):
        p = model.layer_params(model.params, layer)
        zeroed = model.replace_layer_params(model.params, layer, jax.tree_util.tree_map(jnp.zeros_like, p))
        leaves = jax.tree_util.tree_leaves(model.layer_params(zeroed, layer))
        assert leaves and all(float(jnp.abs(v).max()) == 0 for v in leaves)
        assert not np.allclose(model.apply(zeroed, X), model.apply(model.params, X))


def test_layer_shapes_at_another_size_stop_at_a_fixed_size_head():
    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))  # fixed input size
    module = Flat()
    model = from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))), input_size=8)
    assert model.layer_shapes()["head"] == (3,) and model.num_classes == 3
    assert model.layer_shapes(12) == {"conv": (12, 12, 4)}  # the head cannot run at 12 px
    with pytest.raises(JaxvizError, match="does not run to its output"):
        model.output_shape(12)


def test_a_fixed_size_head_at_another_size_is_a_clear_error():
    """A flatten-dense head built at 32 px, wrapped without input_size, run at the default 224:
    flax's ScopeParamShapeError became one JaxvizError naming the size and the fix."""
    import jaxviz
    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))
    module = Flat()
    model = from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(JaxvizError, match="do not fit its module on 224x224 inputs.*input_size="):
        jaxviz.class_visualization(model, None, 1, steps=1)
    with pytest.raises(JaxvizError, match="do not fit its module on 40x40 inputs"):
        jaxviz.vanilla_saliency(model, model.params, jnp.zeros((1, 40, 40, 3)))
    assert jaxviz.class_visualization(model, None, 1, steps=1, size=32).images.shape == (1, 32, 32, 3)


def test_an_nnx_or_apply_fn_fixed_size_head_at_another_size_is_a_clear_error():
    """The same head as an nnx module or a plain apply_fn: jax's dot_general TypeError became
    ParamShapeError naming the size; a model's other TypeErrors pass through unchanged."""
    from flax import nnx

    import jaxviz
    from jaxviz.errors import ParamShapeError
    from jaxviz.interface import from_nnx

    class Flat(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.head = nnx.Linear(32 * 32 * 4, 3, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv(x))
            return self.head(x.reshape(x.shape[0], -1))
    nnx_flat = from_nnx(Flat(nnx.Rngs(0)), input_size=32)
    w = jnp.ones((32 * 32 * 3, 3))
    apply_flat = from_apply_fn(lambda p, x: x.reshape(x.shape[0], -1) @ p, w, input_size=32)
    for model in (nnx_flat, apply_flat):
        assert jaxviz.vanilla_saliency(model, model.params, jnp.ones((1, 32, 32, 3))).shape == (1, 32, 32)
        with pytest.raises(ParamShapeError, match="does not run on 40x48x3 inputs .*dot_general.*input_size="):
            jaxviz.vanilla_saliency(model, model.params, jnp.ones((1, 40, 48, 3)))
    assert nnx_flat.layer_shapes(40) == {"conv": (40, 40, 4)}  # the probe stops before the head

    def wrong(p, x):
        raise TypeError("the user's own bug")
    with pytest.raises(TypeError, match="the user's own bug"):
        from_apply_fn(wrong, w, input_size=32).apply(w, jnp.ones((1, 32, 32, 3)))

    def reshape_bug(p, x):  # a shape error at the declared size: not blamed on the size
        return x.reshape(x.shape[0], 7, -1).sum(1) @ p
    with pytest.raises(TypeError, match="cannot reshape"):
        from_apply_fn(reshape_bug, w, input_size=32).apply(w, jnp.ones((1, 32, 32, 3)))
    with pytest.raises(TypeError):  # a wrong-shaped injected array is not the input size's fault either
        nnx_flat.run(nnx_flat.params, jnp.ones((1, 32, 32, 3)), inject={"conv": jnp.ones((1, 32, 32, 5))})


def test_layers_inside_the_models_own_remat_are_not_layers():
    """A block under nn.remat / jax.checkpoint runs inside the model's own transformation: reading its
    output leaked a tracer (raw UnexpectedTracerError, and it was even the default feature layer);
    now it is not listed and naming it is one clear error. Techniques run on the other layers."""
    import jaxviz
    from flax import nnx

    from jaxviz.interface import from_nnx

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.relu(nn.Conv(8, (3, 3), name="conv")(h))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
            x = nn.remat(Block)(name="rblock")(x)
            return nn.Dense(5, name="head")(x.mean((1, 2)))

    class NnxNet(nnx.Module):
        def __init__(self, rngs):
            self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.block = nnx.Conv(8, 8, (3, 3), rngs=rngs)
            self.head = nnx.Linear(8, 5, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem(x))
            x = jax.checkpoint(lambda h: nnx.relu(self.block(h)))(x)
            return self.head(x.mean((1, 2)))
    module = Net()
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    models = [(from_linen(module, module.init(jax.random.key(0), x[:1]), input_size=16), "rblock/conv", "rblock"),
              (from_nnx(NnxNet(nnx.Rngs(0)), input_size=16), "block", None)]
    for model, inner, outer in models:
        assert inner not in model.layer_names and model.feature_layer == "stem"
        for name in filter(None, (inner, outer)):
            with pytest.raises(JaxvizError, match="runs inside a JAX transformation of the model"):
                model.activation(model.params, x, name)
            with pytest.raises(JaxvizError, match="runs inside a JAX transformation"):
                jaxviz.grad_cam(model, model.params, x, layer=name)
        cam = jaxviz.grad_cam(model, model.params, x)  # the default layer, outside the remat
        assert cam.shape == (2, 16, 16) and np.isfinite(np.asarray(cam)).all()
        np.testing.assert_allclose(jax.jit(lambda p, x: jaxviz.grad_cam(model, p, x))(model.params, x), cam,
                                   rtol=1e-5, atol=1e-6)


def test_a_batchnorm_left_in_training_mode_is_one_clear_error():
    """Forgetting call_kwargs={"train": False}: the layer list came back silently truncated (no
    BatchNorm, no head, num_classes None) and the first technique raised flax's error."""
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(8, (3, 3), name="conv")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
            return nn.Dense(5, name="head")(x.mean((1, 2)))
    variables = Net().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    with pytest.raises(JaxvizError, match="BatchNorm in training mode.*train.: False"):
        from_linen(Net(), variables, input_size=16).layer_names
    model = from_linen(Net(), variables, input_size=16, call_kwargs={"train": False})
    assert model.layer_names == ("conv", "bn", "head") and model.num_classes == 5


def test_only_relus_of_the_inputs_are_replaced():
    # jax.image.resize("linear") builds its weights with max(., 0) of an index grid: not a ReLU
    # of the network, so a model whose only max(., 0) is there has no ReLU to replace
    model = apply_fn_model()
    with pytest.raises(JaxvizError, match="needs ReLU"):
        model.with_backward("guided").apply(model.params, X)
