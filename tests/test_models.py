"""Models: reference predictions on real weights, layer names, pooling semantics, running from a
layer, and the structure described once by the layer kinds (names, shapes, geometry, overrides)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.interface import TORCHVISION
from jaxviz.images import load_images
from jaxviz.models import bundled_model
from jaxviz.models.kinds import Conv, GlobalAvgPool, Kind, MaxPool, Pointwise, ReLU
from jaxviz.models.layers import adaptive_avg_pool, max_pool
from jaxviz.models.network import SequentialNet
from jaxviz.models.registry import MODELS, ModelSpec, get_spec, init_params, layer_shapes

# Issue 2's reference numbers: PIL bicubic resize straight to 224x224, top-1 class and probability.
REFERENCE = {
    "squeezenet1_1": {"chelsea": (285, 0.716), "coffee": (967, 0.963)},
    "efficientnet_lite0": {"chelsea": (285, 0.771), "coffee": (967, 0.900)},
}


@pytest.mark.parametrize("fixture", ["squeezenet", "lite0"])
def test_reference_predictions(fixture, request):
    model = request.getfixturevalue(fixture)
    images = load_images(["chelsea", "coffee"], 224, fit="stretch")
    probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(model.params, model.preprocess(images))))
    for (name, (index, prob)), p in zip(REFERENCE[model.name].items(), probs):
        assert p.argmax() == index, name
        assert abs(p[index] - prob) <= 0.005, (name, p[index])


def test_vgg19_caffe_is_a_feature_extractor(vgg19):
    x = vgg19.preprocess(load_images(["chelsea"], 64, fit="stretch"))
    features = vgg19.apply(vgg19.params, x)
    assert features.shape == (1, 2, 2, 512)
    relu = vgg19.activation(vgg19.params, x, "relu4_2")
    assert relu.shape == (1, 8, 8, 512) and float(relu.min()) == 0.0 and float(relu.max()) > 0


def _random_model(name: str, size: int = 64):
    """A registered model with random weights: shapes by abstract evaluation, values from numpy
    (an eager Flax init compiles every op: minutes for the larger models on a busy CPU)."""
    spec = get_spec(name)
    shapes = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros((1, size, size, 3))))["params"]
    rng = np.random.default_rng(0)

    def value(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            v = rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
        elif leaf in ("var", "scale"):
            v = 1.0 + 0.1 * rng.uniform(size=s.shape)
        else:
            v = 0.1 * rng.normal(size=s.shape)
        return jnp.asarray(v, jnp.float32)
    return bundled_model(spec, jax.tree_util.tree_map_with_path(value, shapes))


def _abstract(name: str, size: int = 64):
    """A registered model whose params are shapes only (shapes and geometry need no values)."""
    spec = get_spec(name)
    return bundled_model(spec, jax.eval_shape(lambda: spec.module().init(jax.random.key(0),
                                                                         jnp.zeros((1, size, size, 3))))["params"])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_and_resumes_from_a_layer(name):
    """Injecting a layer's own activation gives the full output, for every model (random weights)."""
    model = _random_model(name)
    x = jax.random.normal(jax.random.key(1), (2, 64, 48, 3))  # non-square, batch 2
    full, acts = model.run(model.params, x, capture=(model.feature_layer,))
    resumed = model.inject(model.params, x, model.feature_layer, acts[model.feature_layer])
    np.testing.assert_allclose(resumed, full, rtol=1e-5, atol=1e-5)
    assert model.activation(model.params, x, model.feature_layer).shape == acts[model.feature_layer].shape


def test_layer_aliases_resolve():
    vgg = get_spec("vgg19")
    assert vgg.resolve_layer("conv5_4") == "features.34"
    assert vgg.resolve_layer("relu4_2") == "features.22"
    assert vgg.resolve_layer("pool3") == "features.18"
    squeeze = get_spec("squeezenet1_1")
    assert squeeze.resolve_layer("fire9") == "features.12"
    assert squeeze.resolve_layer("fire2") == "features.3"
    assert squeeze.resolve_layer("conv10") == "classifier.1"
    assert squeeze.resolve_layer("pool3") == "features.8"
    with pytest.raises(JaxvizError, match="did you mean"):
        squeeze.resolve_layer("features.13x")
    with pytest.raises(JaxvizError, match="unknown model"):
        get_spec("alexnet9")


def test_layer_shapes_match_torchvision():
    shapes = layer_shapes(get_spec("squeezenet1_1"))
    assert shapes["features.0"] == (111, 111, 64)
    assert shapes["features.2"] == (55, 55, 64)  # ceil-mode pooling: 111 -> 55
    assert shapes["features.12"] == (13, 13, 512)
    assert shapes["classifier.3"] == (1000,)
    assert layer_shapes(get_spec("squeezenet1_0"))["features.2"] == (54, 54, 96)  # 7x7/2 conv: 109 -> 54
    assert layer_shapes(get_spec("efficientnet_lite0"))["head"] == (7, 7, 1280)
    assert layer_shapes(get_spec("vgg16"))["features.30"] == (7, 7, 512)


def _torch_max_pool_reference(x: np.ndarray, k: int, s: int, ceil: bool) -> np.ndarray:
    """torch.nn.MaxPool2d semantics written out with loops (windows clipped at the border)."""
    n, h, w, c = x.shape

    def out_size(size):
        o = (-(-(size - k) // s) if ceil else (size - k) // s) + 1
        return o - 1 if ceil and (o - 1) * s >= size else o
    oh, ow = out_size(h), out_size(w)
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("size", [(7, 8), (10, 11), (13, 13)])
@pytest.mark.parametrize("ceil", [True, False])
def test_max_pool_matches_torch_semantics(size, ceil, rng):
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    np.testing.assert_array_equal(max_pool(jnp.asarray(x), 3, 2, ceil), _torch_max_pool_reference(x, 3, 2, ceil))


def test_adaptive_avg_pool_bins(rng):
    x = rng.standard_normal((1, 10, 9, 2)).astype(np.float32)
    out = np.asarray(adaptive_avg_pool(jnp.asarray(x), (7, 7)))
    for i in range(7):
        for j in range(7):
            r0, r1 = (i * 10) // 7, -(-((i + 1) * 10) // 7)
            c0, c1 = (j * 9) // 7, -(-((j + 1) * 9) // 7)
            np.testing.assert_allclose(out[0, i, j], x[0, r0:r1, c0:c1].mean(axis=(0, 1)), rtol=1e-5, atol=1e-7)


def test_preprocess_roundtrip(rng):
    images = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
    for spec in MODELS.values():
        x = spec.preprocessing(jnp.asarray(images))
        np.testing.assert_allclose(spec.preprocessing.invert(x), images, atol=1e-5)
    # Caffe order: BGR, 0-255, mean subtracted.
    caffe = get_spec("vgg19_caffe").preprocessing(jnp.asarray(images))
    np.testing.assert_allclose(caffe[..., 0], images[..., 2] * 255 - 103.939, atol=1e-3)


# --------------------------------------------------------------------------- structure, described once

@pytest.mark.parametrize("name", list(MODELS))
def test_kinds_geometry_gives_the_real_output_sizes(name):
    """Each kind's ``out_hw`` (from its ``ops``) equals the traced shape, on odd non-square inputs."""
    model = _abstract(name)
    for hw in ((64, 48), (57, 71)):
        shapes = model.layer_shapes(hw)
        cur = hw
        for stage in model.incremental_stages:
            if stage.pooling:  # global pooling / dense: no spatial map after this
                break
            cur = stage.out_hw(cur)
            assert tuple(shapes[stage.name][:2]) == tuple(cur), (name, hw, stage)


def test_stage_names_are_torchvision_module_paths():
    squeeze = get_spec("squeezenet1_1")
    assert squeeze.layer_names == tuple(f"features.{i}" for i in range(13)) + tuple(f"classifier.{i}" for i in range(4))
    assert [type(s).__name__ for s in squeeze.stages[:4]] == ["Conv", "ReLU", "MaxPool", "Fire"]
    vgg = get_spec("vgg16")
    assert vgg.layer_names[-8:] == ("avgpool",) + tuple(f"classifier.{i}" for i in range(7))
    assert vgg.layer_names[28:31] == ("features.28", "features.29", "features.30")
    lite = get_spec("efficientnet_lite0")
    assert lite.layer_names[:2] == ("stem", "blocks.0") and lite.layer_names[-4:] == ("head", "pool", "dropout",
                                                                                         "classifier")


def test_every_stage_is_a_named_submodule_the_interface_can_replace(tiny_model):
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    assert tiny_model.layer_names == tuple(s.name for s in tiny_model.incremental_stages)
    zero = tiny_model.inject(tiny_model.params, x, "features.4", jnp.zeros((2, 8, 8, 8)))
    bias = tiny_model.params["classifier.0"]["bias"]  # conv 1x1 of zeros -> bias -> ReLU -> mean
    np.testing.assert_allclose(zero, jnp.broadcast_to(jax.nn.relu(bias), (2, 5)), rtol=1e-6)
    squeeze = _abstract("squeezenet1_1")
    assert squeeze.resolve_layer("features.3/squeeze") == "features.3/squeeze"  # inner modules are layers too
    assert squeeze.layer_shapes(64)["features.3/expand3x3"] == (15, 15, 64)


def test_a_new_kind_is_one_class():
    """A kind defined here (nowhere else) runs, has geometry, an incremental rule and FLOPs."""
    from dataclasses import dataclass

    from jaxviz.occlusion import incremental_occlusion, occlusion

    @dataclass(frozen=True)
    class Square(Pointwise):  # an elementwise stage: forward, geometry and rule from Pointwise
        def apply(self, x):
            return x * x

    @dataclass(frozen=True)
    class AvgPool2(Kind):  # a 2x2 / 2 average pool, with its own rule
        incremental = True

        def module(self):
            from jaxviz.models.layers import Lambda
            return Lambda(lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4,
                          name=self.name)

        def ops(self, hw):
            from jaxviz.models.incremental import Op
            return (Op(2, 2, ((0, 0), (0, 0))),)

        def _valid(self, x):
            return jax.lax.reduce_window(x, 0.0, jax.lax.add, (2, 2, 1), (2, 2, 1), "VALID") / 4

        def clean(self, params, x):
            return self._valid(x), {"in": x}

        def update(self, params, ctx, change, hw):
            from jaxviz.models.incremental import spatial
            op = self.ops(hw)[0]
            return spatial(op, ctx["in"], change, op.out_shape(*hw), self._valid)

    from jaxviz.models.kinds import Dense
    stages = (Conv("conv", 4, 3, 1, 1), Square("square"), AvgPool2("pool"), Conv("conv2", 6, 3, 1, 1),
              ReLU("relu"), GlobalAvgPool("gap"), Dense("fc", 3))
    spec = ModelSpec(name="new", description="", stages=stages, preprocessing=get_spec("squeezenet1_1").preprocessing,
                     input_size=16, num_classes=3)
    model = bundled_model(spec, init_params(spec, input_size=16))
    x = jax.random.normal(jax.random.key(2), (2, 16, 18, 3))
    assert model.receptive_fields(16)["conv2"].size == 3 + 1 + 2 * 2
    a = occlusion(model, model.params, x, window=4, stride=3)
    b = incremental_occlusion(model, model.params, x, window=4, stride=3)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(np.ptp(np.asarray(a))))


def test_overrides_swap_implementations_by_kind_class(tiny_model):
    """``SequentialNet.overrides`` replaces a kind's forward by class (as ``jaxviz.accel`` does);
    the parameters and names are unchanged."""
    def doubled_pool(stage, x):
        from jaxviz.models.layers import Lambda
        return Lambda(lambda v: 2 * max_pool(v, stage.kernel, stage.stride, stage.ceil_mode), name=stage.name)(x)
    stages = tiny_model.incremental_stages
    x = jax.random.normal(jax.random.key(3), (1, 16, 16, 3))
    plain = SequentialNet(stages).apply({"params": tiny_model.params}, x, capture_intermediates=True)[1]
    swapped = SequentialNet(stages, overrides=((MaxPool, doubled_pool),)).apply(
        {"params": tiny_model.params}, x, capture_intermediates=True)[1]
    a, b = plain["intermediates"]["features.2"]["__call__"][0], swapped["intermediates"]["features.2"]["__call__"][0]
    np.testing.assert_allclose(b, 2 * a, rtol=1e-6)

    from jaxviz.accel.fast_layers import FastPoolNet
    fast = FastPoolNet(stages)
    np.testing.assert_allclose(fast.apply({"params": tiny_model.params}, x),
                               SequentialNet(stages).apply({"params": tiny_model.params}, x), rtol=1e-6)


def _facts_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "write_model_facts.py"
    spec = importlib.util.spec_from_file_location("_jaxviz_write_model_facts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(MODELS))
def test_recorded_facts_are_what_tracing_the_module_gives(name):
    """facts.json (read instead of tracing every model at every start) == the traced module."""
    from jaxviz.models.registry import param_shapes, recorded_facts, traced_param_shapes
    spec = get_spec(name)
    assert recorded_facts(spec) == _facts_script().traced_facts(spec), \
        "stale jaxviz/models/facts.json: run python scripts/write_model_facts.py"
    assert param_shapes(spec) == traced_param_shapes(spec)
    # a model built from the registry starts with the recorded probe: equal to tracing it again
    from jaxviz.models.bundled import BundledModel
    model = BundledModel(spec, _abstract_params(spec))
    size = model.input_hw()
    recorded_out, recorded = model._probe(size)
    repeated = set(model._repeated)
    model._probes.clear()
    model._repeated.clear()
    out, acts = model._probe(size)
    assert list(recorded) == list(acts) and repeated == model._repeated
    assert all((a.shape, a.dtype) == (recorded[n].shape, recorded[n].dtype) for n, a in acts.items())
    assert (out is None and recorded_out is None) or (out.shape, out.dtype) == (recorded_out.shape, recorded_out.dtype)


def _abstract_params(spec):
    x = jnp.zeros((1, spec.input_size, spec.input_size, 3))
    return jax.eval_shape(lambda: spec.module().init(jax.random.key(0), x))["params"]


def test_facts_only_for_the_registry_own_specs():
    import dataclasses

    from jaxviz.models.registry import param_shapes, recorded_facts, traced_param_shapes
    spec = get_spec("squeezenet1_1")
    other = dataclasses.replace(spec, stages=spec.stages[:3])  # same name, another network
    assert recorded_facts(other) is None
    assert param_shapes(other) == traced_param_shapes(other) != param_shapes(spec)


def test_quick_param_check_skips_tracing_the_initialiser_but_keeps_flax_checks(monkeypatch):
    """jaxviz's linen layers (``layers.Conv`` / ``Dense`` / ``FrozenBatchNorm``) check an applied
    parameter's shape without tracing its random initialiser (flax's ``Scope.param`` runs
    ``jax.eval_shape`` of it per parameter and trace); ``init``, the program and the shape error
    are flax's."""
    import flax.linen as nn
    from flax.errors import ScopeParamShapeError

    from jaxviz.models import layers
    calls = []

    def counted(key, shape, dtype=jnp.float32):
        calls.append(shape)
        return nn.initializers.lecun_normal()(key, shape, dtype)

    x = jnp.ones((1, 6, 5, 3))
    ours, flax_conv = layers.Conv(4, (3, 3), kernel_init=counted), nn.Conv(4, (3, 3), kernel_init=counted)
    params = ours.init(jax.random.key(1), x)
    assert calls == [(3, 3, 3, 4)]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), params, flax_conv.init(jax.random.key(1), x)))
    calls.clear()
    assert jnp.array_equal(ours.apply(params, x), flax_conv.apply(params, x))
    assert calls == [(3, 3, 3, 4)]  # flax's own layer traced the initialiser; ours did not
    bad = {"params": {**params["params"], "kernel": jnp.ones((3, 3, 3, 5))}}
    with pytest.raises(ScopeParamShapeError):
        ours.apply(bad, x)
    # an initialiser called another way (not with a shape tuple) keeps flax's own check
    class Odd(layers.QuickParamCheck, nn.Module):
        @nn.compact
        def __call__(self, z):
            return z @ self.param("w", lambda key, rows, cols: jnp.ones((rows, cols)), 3, 4)
    odd_params = Odd().init(jax.random.key(0), jnp.ones((2, 3)))
    assert Odd().apply(odd_params, jnp.ones((2, 3))).shape == (2, 4)
    # the whole network traces to the same program as with flax's check
    spec = get_spec("squeezenet1_1")
    net_params = _abstract_params(spec)
    image = jax.ShapeDtypeStruct((1, 64, 72, 3), jnp.float32)
    quick = str(jax.make_jaxpr(lambda p, z: spec.module().apply({"params": p}, z))(net_params, image))
    monkeypatch.setattr(layers.QuickParamCheck, "param", nn.Module.param)
    assert quick == str(jax.make_jaxpr(lambda p, z: spec.module().apply({"params": p}, z))(net_params, image))


# ---------------------------------------------------------------- the class head

def _arrays_in(jaxpr) -> list:
    """Shapes of every array a jaxpr computes, nested jaxprs included."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _arrays_in(inner)
    return shapes


def _full_head(model, params, x, index=None, inject=None):
    """Logits read from the whole output (``Model``'s own ``selected_logits``)."""
    from jaxviz.interface import Model
    return Model.selected_logits(model, params, x, index, inject=inject)


@pytest.mark.parametrize("name", list(MODELS))
def test_selected_logits_are_the_output_at_the_classes_for_every_model(name):
    """Only the selected classes computed (where the head allows) gives the logits read from
    the whole output, for given and predicted classes, non-square inputs, batch 3."""
    model = _random_model(name)
    x = jax.random.normal(jax.random.key(2), (3, 64, 48, 3))
    if model.num_classes is None:  # a feature extractor
        with pytest.raises(JaxvizError, match="no class logits"):
            model.selected_logits(model.params, x)
        return
    logits = model.apply(model.params, x)
    index = jnp.asarray([5, 999, 0], jnp.int32)
    got, got_index = model.selected_logits(model.params, x, index)
    np.testing.assert_array_equal(got_index, index)
    np.testing.assert_allclose(got, logits[jnp.arange(3), index], rtol=1e-5, atol=1e-5)
    predicted, classes = model.selected_logits(model.params, x)
    np.testing.assert_array_equal(classes, jnp.argmax(logits, -1))
    np.testing.assert_allclose(predicted, logits.max(-1), rtol=1e-5, atol=1e-5)


def test_the_selected_head_skips_the_other_classes_and_keeps_the_backward_rule():
    """SqueezeNet's head (1x1 conv to 1000 classes, ReLU, global average pool): the gradient of
    the selected logits computes no 1000-channel map (the whole head does), and its input
    gradient equals the whole head's under every backward rule, also from a layer injected
    before the head; a layer injected inside the head falls back to the whole output."""
    from jaxviz.accel import accelerate
    model = _random_model("squeezenet1_1")
    params = model.params
    x = jax.random.normal(jax.random.key(3), (2, 64, 80, 3))
    index = jnp.asarray([7, 640], jnp.int32)

    def maps_of(fn):
        jaxpr = jax.make_jaxpr(jax.grad(lambda x: fn(model, params, x, index)[0].sum()))(x)
        return [s for s in _arrays_in(jaxpr.jaxpr) if len(s) == 4 and s[-1] == 1000]
    assert maps_of(_full_head)  # the check can see the head
    assert not maps_of(lambda m, p, x, i: m.selected_logits(p, x, i))

    for net in (model, accelerate(model)):
        for rule in ("gradient", "guided", "deconv"):
            m = net.with_backward(rule)
            assert m.backward_rule == rule
            fast = jax.jit(jax.grad(lambda x: m.selected_logits(params, x, index)[0].sum()))(x)
            slow = jax.jit(jax.grad(lambda x: _full_head(m, params, x, index)[0].sum()))(x)
            np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6 * float(jnp.abs(slow).max()))
    a = model.activation(params, x, "features.12")
    for layer, value in (("features.12", a), ("classifier.1", model.activation(params, x, "classifier.1"))):
        fast = jax.jit(jax.grad(lambda v: model.selected_logits(params, x, index, inject={layer: v})[0].sum()))(value)
        slow = jax.jit(jax.grad(lambda v: _full_head(model, params, x, index, inject={layer: v})[0].sum()))(value)
        np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6 * float(jnp.abs(slow).max()))


def test_class_gradient_techniques_use_the_selected_head():
    """Grad-CAM, the input gradient and the class-score objective of SqueezeNet with a given
    class compute no 1000-channel map (the selected head), and Grad-CAM's values equal those
    from the whole head."""
    from jaxviz import cam, objectives, saliency
    model = _random_model("squeezenet1_1")
    params = model.params
    x = jax.random.normal(jax.random.key(4), (2, 64, 64, 3))
    index = jnp.asarray([3, 900], jnp.int32)
    objective = objectives.class_score(model, params, index)
    for fn in (lambda x: cam.grad_cam(model, params, x, layer="features.9", index=index),
               lambda x: saliency.gradients(model, params, x, index=index),
               lambda x: jax.grad(lambda x: objective.pure_fn(x, None, objective.data).sum())(x)):
        shapes = _arrays_in(jax.make_jaxpr(fn)(x).jaxpr)
        assert not [s for s in shapes if len(s) == 4 and s[-1] == 1000]

    whole = model.derive(selected_logits=functools.partial(_full_head, model))
    np.testing.assert_allclose(cam.grad_cam(model, params, x, layer="features.9", index=index),
                               cam.grad_cam(whole, params, x, layer="features.9", index=index), rtol=1e-4, atol=1e-6)


def test_flop_saving_counts_one_class_of_a_selected_head():
    """Occlusion scores one class, so SqueezeNet's 1x1 classifier (13x13 x 512 -> 1000 at 224 px)
    counts one class's multiply-adds: 999 classes' fewer than the whole network's count; a head
    that cannot select (VGG19's feature extractor) counts the same either way."""
    from jaxviz.occlusion import _flops
    model = _abstract("squeezenet1_1", 224)
    assert model.class_head == model.spec.layer_names.index("classifier.1")
    whole, one = _flops(model, (224, 224), None), _flops(model, (224, 224), None, one_class=True)
    assert whole - one == pytest.approx(2 * 13 * 13 * 512 * 999, rel=1e-6)
    caffe = _abstract("vgg19_caffe")
    assert caffe.class_head is None
    assert _flops(caffe, (64, 64), None, one_class=True) == _flops(caffe, (64, 64), None)


def test_selected_head_edge_cases():
    """Numpy parameters (as loaded) with a traced class index under jit; a negative index counts
    from the end; a concrete index out of range is an error, a traced one gives NaN (as reading
    the whole output does), never another class's score; guided and
    deconvnet rules on a network whose only ReLU is in the head; a feature extractor's clear error
    for every score kind and for occlusion."""
    from jaxviz import occlusion, saliency
    from jaxviz.targets import Target, class_scores_of
    model = _random_model("squeezenet1_1")
    numpy_params = jax.tree_util.tree_map(np.asarray, model.params)
    x = jax.random.normal(jax.random.key(5), (2, 64, 64, 3))
    index = jnp.asarray([3, 281], jnp.int32)
    jitted = jax.jit(lambda x, i: saliency.gradients(model, numpy_params, x, index=i))(x, index)
    np.testing.assert_allclose(jitted, saliency.gradients(model, model.params, x, index=index), rtol=1e-4, atol=1e-7)

    logits = model.apply(model.params, x)
    got = jax.jit(lambda i: model.selected_logits(numpy_params, x, i)[0])(jnp.asarray([-1, 1000]))  # traced
    np.testing.assert_allclose(got[0], logits[0, -1], rtol=1e-5)
    assert np.isnan(got[1])
    for bad in ([-1, 1000], 1000, -1001, [2.5, 1]):  # concrete: checked, one clear error
        with pytest.raises(JaxvizError, match="out of range for 1000 classes|must be integers"):
            model.selected_logits(numpy_params, x, bad)
        with pytest.raises(JaxvizError, match="out of range for 1000 classes|must be integers"):
            class_scores_of(model, model.params, x, bad, "prob")
    np.testing.assert_allclose(model.selected_logits(model.params, x, -1)[0], logits[:, -1], rtol=1e-5)

    stages = (Conv("features.0", 4, 3, 1, 1), MaxPool("features.1", 2, 2),
              Conv("classifier.0", 5, 1), ReLU("classifier.1"), GlobalAvgPool("classifier.2"))
    spec = ModelSpec(name="head-relu-only", description="", stages=stages, preprocessing=TORCHVISION,
                     input_size=16, num_classes=5)
    net = bundled_model(spec, spec.module().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
    x16 = jax.random.normal(jax.random.key(6), (2, 16, 16, 3))
    for rule in ("guided", "deconv"):
        m = net.with_backward(rule)
        fast = jax.grad(lambda x: m.selected_logits(net.params, x, jnp.asarray([1, 2]))[0].sum())(x16)
        slow = jax.grad(lambda x: _full_head(m, net.params, x, jnp.asarray([1, 2]))[0].sum())(x16)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)

    caffe = _random_model("vgg19_caffe")
    x32 = jax.random.normal(jax.random.key(7), (1, 32, 32, 3))
    for score in ("logit", "prob", "logprob"):
        with pytest.raises(JaxvizError, match="no class logits"):
            class_scores_of(caffe, caffe.params, x32, None, score)
    for occlude in (occlusion.occlusion, occlusion.incremental_occlusion):
        with pytest.raises(JaxvizError, match="no class logits"):
            occlude(caffe, caffe.params, x32, Target(), window=8, stride=8)
