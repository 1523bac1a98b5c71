"""The Python API at its edges, across techniques: NaN or infinite inputs are refused (not turned
into finite results of nothing), an empty batch gives empty results, class and channel lists are
whole numbers counted from the end as in attribution, and one layer name given as a string is one
layer. Each case once gave a raw error or a silent wrong result (a user's trial of the API)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import activations, embedding, metrics, patches, segment, style
from jaxviz.classviz import channel_visualization, class_visualization
from jaxviz.dream import deepdream
from jaxviz.errors import JaxvizError
from jaxviz.inversion import invert
from jaxviz.optimize import adam, optimize
from jaxviz.saliency import vanilla_saliency

KEY = jax.random.key(0)


def _images(model, n=1, hw=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return model.preprocess(jnp.asarray(rng.uniform(0.1, 0.9, (n, *hw, 3)), jnp.float32))


def _with_nan(x):
    return x.at[0, 3, 4, 1].set(jnp.nan)


# ------------------------------------------------------------------ NaN / inf

def test_nan_starts_and_references_are_refused(tiny_model):
    m, x = tiny_model, _images(tiny_model)
    with pytest.raises(JaxvizError, match=r"starting images \(init\) contain NaN"):
        class_visualization(m, None, [1], init=_with_nan(x), steps=2)
    for parameterization in ("fourier", "pixels"):
        with pytest.raises(JaxvizError, match=r"starting images \(init\) contain NaN"):
            channel_visualization(m, None, "features.3", [1], init=_with_nan(x), steps=2,
                                  parameterization=parameterization)
    with pytest.raises(JaxvizError, match="reference images x0 contain NaN"):
        invert(m, None, _with_nan(x), "features.3", steps=2)
    with pytest.raises(JaxvizError, match=r"starting images \(init\) contain NaN"):
        invert(m, None, x, "features.3", init=x.at[0, 0, 0, 0].set(jnp.inf), steps=2)
    with pytest.raises(JaxvizError, match="images x contain NaN"):
        deepdream(m, None, _with_nan(_images(m, hw=(32, 32))), "features.3", octaves=1, steps=2)
    # the engine itself, for a user's own objective
    with pytest.raises(JaxvizError, match="contain NaN"):
        optimize(lambda v, keys: jnp.sum(v ** 2, axis=(1, 2, 3)), _with_nan(x), optimizer=adam(0.1), steps=2)


def test_nan_features_are_refused_by_nearest_neighbours():
    rng = np.random.default_rng(1)
    database = rng.normal(size=(10, 5)).astype(np.float32)
    queries = database[:2].copy()
    queries[0, 1] = np.nan
    with pytest.raises(JaxvizError, match="queries contain NaN"):
        embedding.nearest_neighbors(queries, database, 3)
    database[4, 0] = np.inf
    with pytest.raises(JaxvizError, match="database contains NaN"):
        embedding.nearest_neighbors(database[:2], database, 3)


# ------------------------------------------------------------------ empty batches

def test_an_empty_batch_gives_empty_results(tiny_model):
    m, params = tiny_model, tiny_model.params
    none = _images(m, n=1)[:0]
    result = class_visualization(m, None, [], steps=3)
    assert result.images.shape == (0, 16, 16, 3) and result.losses.shape == (0, 0)
    assert result.steps_run.shape == (0,)
    for parameterization in ("fourier", "pixels"):
        result = channel_visualization(m, None, "features.3", [], steps=3, parameterization=parameterization)
        assert result.images.shape == (0, 16, 16, 3)
    result = invert(m, None, none, "features.3", steps=3)
    assert result.images.shape == (0, 16, 16, 3)
    assert [np.shape(v) for v in result.extras["feature_loss"]] == [(0,), (0,)]
    assert deepdream(m, None, _images(m, hw=(32, 32))[:0], "features.3", octaves=1, steps=2).shape == (0, 32, 32, 3)
    curves = metrics.deletion_insertion(m, params, none, jnp.zeros((0, 16, 16)), steps=4)
    assert curves["deletion"].shape == curves["insertion"].shape == (0, 5)
    assert curves["deletion_auc"].shape == curves["insertion_auc"].shape == (0,)
    # and the empty result does not depend on a trace: the same call on one image works
    one = metrics.deletion_insertion(m, params, _images(m), jnp.ones((1, 16, 16)), steps=4)
    assert one["deletion"].shape == (1, 5)


# ------------------------------------------------------------------ class and channel lists

def test_classes_and_channels_are_whole_numbers_counted_from_the_end(tiny_model):
    m = tiny_model
    # class -1 is the last class, as in attribution (vanilla_saliency(target=-1))
    last = class_visualization(m, None, [-1], steps=3, key=KEY)
    explicit = class_visualization(m, None, [4], steps=3, key=KEY)
    np.testing.assert_array_equal(np.asarray(last.images), np.asarray(explicit.images))
    with pytest.raises(JaxvizError, match="must be integers"):  # was truncated to class 1
        class_visualization(m, None, [1.5], steps=2)
    with pytest.raises(JaxvizError, match="out of range for 5 classes"):
        class_visualization(m, None, [5], steps=2)
    with pytest.raises(JaxvizError, match="must be integers"):
        class_visualization(m, None, "cat", steps=2)
    a = channel_visualization(m, None, "features.3", [-1], steps=2, key=KEY)
    b = channel_visualization(m, None, "features.3", [7], steps=2, key=KEY)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    with pytest.raises(JaxvizError, match="channel 8 is out of range for 8 channels of features.3"):
        channel_visualization(m, None, "features.3", [8], steps=2)
    # channel_fields: one channel as an int (was a TypeError), a list, negative from the end
    one = patches.channel_fields(m, "features.3", 2)
    assert list(one) == [2]
    assert patches.channel_fields(m, "features.3", [-1, 2]) == {7: patches.channel_fields(m, "features.3", 7)[7],
                                                                 2: one[2]}
    with pytest.raises(JaxvizError, match="must be integers"):
        patches.channel_fields(m, "features.3", [0.5])


# ------------------------------------------------------------------ a layer name as a string

def test_one_layer_name_as_a_string_is_one_layer(tiny_model):
    m, params, x = tiny_model, tiny_model.params, _images(tiny_model)
    assert list(m.activations(params, x, "features.3")) == ["features.3"]
    assert activations.check_layers(m, "features.3")[0] == {"features.3": "features.3"}
    assert style.gatys_loss(m, None, "features.3").style_layers == ("features.3",)
    feats = style.layer_features(m, "features.3")(params, x)
    assert len(feats) == 1 and feats[0].shape == (1, 8, 8, 8)
    assert list(patches.measured_fields(m, params, "features.3")) == ["features.3"]
    layers, _, maps = metrics.cascading_maps(vanilla_saliency, m, params, x, 1, key=KEY, layers="features.3")
    assert layers == ["features.3"] and len(maps) == 1


# ------------------------------------------------------------------ 2-D maps and segmentation

def test_embedding_dims_are_checked():
    features = np.random.default_rng(2).normal(size=(12, 5)).astype(np.float32)
    assert embedding.pca(features, 5).shape == (12, 5)
    with pytest.raises(JaxvizError, match="at most the feature size 5"):
        embedding.pca(features, 7)
    for dims in (0, 1.5, True):
        with pytest.raises(JaxvizError, match="dims must be a whole number"):
            embedding.pca(features, dims)
        with pytest.raises(JaxvizError, match="dims must be a whole number"):
            embedding.tsne(features, dims)
    with pytest.raises(JaxvizError, match="at most 3 dims"):
        embedding.tsne(np.tile(features, (100, 1)), 4, exact_below=100)


@pytest.mark.parametrize("option, value", [("components", 0), ("components", 1.5), ("gamma", -1.0),
                                           ("max_side", 0), ("smooth", -1.0), ("smooth", float("nan"))])
def test_segmentation_settings_are_checked(option, value):
    rng = np.random.default_rng(3)
    with pytest.raises(JaxvizError, match=option):  # components=0 ran as 1, silently
        segment.segment_from_saliency(rng.uniform(size=(32, 32, 3)), rng.uniform(size=(32, 32)), **{option: value})


# ------------------------------------------------------------------ target and index together

def test_a_target_with_another_index_is_refused_not_ignored(tiny_model):
    """index= replaced the target's class silently (grad_cam(target=3, index=[1, 1]) explained
    class 1); concrete and different, that is refused; the same class, or a traced index (a
    batch of targets under jit), is taken."""
    from jaxviz.cam import grad_cam
    from jaxviz.occlusion import occlusion
    from jaxviz.targets import Target
    m, params, x = tiny_model, tiny_model.params, _images(tiny_model, n=2)
    calls = {"vanilla": lambda t, i: vanilla_saliency(m, params, x, t, index=i),
             "grad_cam": lambda t, i: grad_cam(m, params, x, t, layer="features.3", index=i),
             "occlusion": lambda t, i: occlusion(m, params, x, t, window=4, stride=4, index=i)}
    for name, call in calls.items():
        with pytest.raises(JaxvizError, match=r"names class 3 but index= gives \[1, 1\]"):
            call(3, jnp.asarray([1, 1]))
        np.testing.assert_allclose(call(3, jnp.asarray([3, 3])), call(3, None), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(call(None, jnp.asarray([1, 1])), call(1, None), rtol=1e-6, err_msg=name)
    with pytest.raises(JaxvizError, match="names features.4 channel 0 but index="):
        vanilla_saliency(m, params, x, Target(index=0, layer="features.4"), index=jnp.asarray([2, 2]))
    traced = jax.jit(lambda i: vanilla_saliency(m, params, x, 3, index=i))(jnp.asarray([1, 1]))
    np.testing.assert_allclose(traced, vanilla_saliency(m, params, x, index=jnp.asarray([1, 1])), rtol=1e-6)


# ------------------------------------------------------------------ params=None

def test_params_none_means_the_models_own_in_every_technique(tiny_model):
    """Documented for the optimising techniques, it was a raw flax error in attribution. A bare
    apply_fn has no parameters of its own: it gets the None given (a parameter-free function)."""
    import jaxviz
    from jaxviz.cam import cam
    m, params, x = tiny_model, tiny_model.params, _images(tiny_model, n=2)
    calls = {
        "vanilla": lambda p: jaxviz.vanilla_saliency(m, p, x, 3),
        "smoothgrad": lambda p: jaxviz.smoothgrad(m, p, x, 3, key=KEY, samples=2),
        "integrated": lambda p: jaxviz.integrated_gradients(m, p, x, 3, steps=4),
        "grad_cam": lambda p: jaxviz.grad_cam(m, p, x, 3, layer="features.3"),
        "guided_grad_cam": lambda p: jaxviz.guided_grad_cam(m, p, x, layer="features.3"),
        "cam": lambda p: cam(m, p, x, 3, layer="classifier.1"),
        "occlusion": lambda p: jaxviz.incremental_occlusion(m, p, x, 3, window=4, stride=4),
        "deletion": lambda p: metrics.deletion_insertion(m, p, x, jnp.ones((2, 16, 16)), steps=2)["deletion"],
    }
    for name, call in calls.items():
        np.testing.assert_array_equal(np.asarray(call(None)), np.asarray(call(params)), err_msg=name)
    free = jax.jit(lambda p, v: m.apply(params, v))  # ignores its parameters
    np.testing.assert_array_equal(np.asarray(jaxviz.vanilla_saliency(free, None, x, 3)),
                                  np.asarray(calls["vanilla"](params)))


# ------------------------------------------------------------------ small public parts

def _bad_calls():
    """(name, call, message) for the small public functions: each once ran silently on a
    misspelt or impossible argument (NaN images, another option, a truncated value) or raised
    a raw Python error."""
    from jaxviz import activations, adversarial, blackbox, fast_style, linear, occlusion, texture
    x01 = jnp.full((1, 8, 8, 3), 0.5)
    key = jax.random.key(0)
    caps = np.array([1, 0])
    yield "gaussian_blur sigma 0", lambda: metrics.gaussian_blur(x01, 0.0), "positive number of pixels"
    yield "gaussian_blur sigma < 0", lambda: metrics.gaussian_blur(x01, -2.0), "positive number of pixels"
    yield "baseline blur nan", lambda: metrics.baseline_images(x01, "blur", float("nan")), "positive number"
    yield "cell_maps 0", lambda: metrics.cell_maps(jnp.ones((1, 4, 4)), 0), "patch must be"
    yield "attack_loss kind", lambda: adversarial.attack_loss(jnp.ones((1, 3)), jnp.asarray([0]), targeted=False,
                                                              kind="bad"), "unknown loss 'bad'"
    yield "step_rule", lambda: adversarial.step_rule("bad", 0.1), "unknown step rule"
    yield "project norm", lambda: adversarial.project(x01, x01, norm="l1", eps=0.1), "unknown norm 'l1'"
    yield "random_init norm", lambda: adversarial.random_init(key, x01, norm="l1", eps=0.1), "unknown norm"
    yield "direction_order", lambda: blackbox.direction_order(key, (4, 4), "wavelet"), "unknown basis"
    yield "dct_matrix 0", lambda: blackbox.dct_matrix(0), "n >= 1"
    yield "min_cut floats", lambda: segment.min_cut(np.array([1.5, 0.0]), np.array([0.0, 1.5]), np.array([[0, 1]]),
                                                    np.array([0.4])), "non-negative integers"
    yield "min_cut negative", lambda: segment.min_cut(caps, caps, np.array([[0, 1]]), np.array([-1])), "non-negative"
    yield "grid_edges 6", lambda: segment.grid_edges(3, 3, 6), "neighbours must be 4 or 8"
    yield "saliency_seeds nan", lambda: segment.saliency_seeds(np.full((8, 8), np.nan)), "NaN"
    yield "mask_overlay shape", lambda: segment.mask_overlay(np.zeros((8, 8, 3)), np.zeros((4, 8), bool)), "mask must"
    yield "efros_leung range", lambda: texture.efros_leung(jnp.full((12, 12, 3), 5.0), 8, key=key, radius=2), "[0, 1]"
    yield "style mix nan", lambda: fast_style.style_weights(2, [np.nan, 1.0]), "finite and >= 0"
    yield "style mix negative", lambda: fast_style.style_weights(3, [1.0, -2.0, 0.0]), "finite and >= 0"
    yield "random_crops small", lambda: fast_style.random_crops(jnp.zeros((1, 20, 20, 3)), key, 2, 32), "at least"
    yield "digit lr", lambda: linear.train_digit_templates(steps=5, lr=-1.0), "lr must be > 0"
    yield "tsne pca_dims 0", lambda: embedding.tsne(np.ones((8, 3)), 2, pca_dims=0), "pca_dims must be"
    yield "strongest_channel by", lambda: activations.strongest_channel(jnp.ones((1, 2, 2, 3)), "bogus"), "by must"
    yield "maps_grid highlight", lambda: activations.maps_grid(np.zeros((4, 8, 8)), highlight=20), "highlight 20"
    yield "window_positions stride 0", lambda: occlusion.window_positions(16, 16, 4, 0), "stride must be at least 1"
    # messages that named the wrong problem
    yield "parse_amount negative", lambda: adversarial.parse_amount("-8/255"), "must be a positive finite number"
    yield "style check_options", lambda: style.check_options(weights=[-1.0]), "loss weights (content, style, tv)"


@pytest.mark.parametrize("name, call, message", list(_bad_calls()), ids=lambda v: v if isinstance(v, str) else "")
def test_small_public_parts_refuse_bad_arguments(name, call, message):
    with pytest.raises(JaxvizError, match=__import__("re").escape(message)):
        call()


def test_nan_inputs_to_deletion_and_fast_style_are_refused(tiny_model):
    from jaxviz import fast_style
    m = tiny_model
    x = _images(m, n=1)
    with pytest.raises(JaxvizError, match="maps contain NaN"):
        metrics.deletion_insertion(m, None, x, jnp.full((1, 16, 16), jnp.nan), steps=2)
    net = fast_style.TransformNet(num_styles=2)
    params = net.init(KEY, jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 2)))["params"]
    with pytest.raises(JaxvizError, match="style weights contain NaN"):
        fast_style.stylize(net, params, jnp.full((1, 16, 16, 3), 0.5), jnp.asarray([jnp.nan, 1.0]))
    from jaxviz.occlusion import incremental_occlusion
    with pytest.raises(JaxvizError, match="threshold must be >= 0"):
        incremental_occlusion(m, None, x, 1, window=4, stride=4, threshold=-1.0)
    from jaxviz.adversarial import projected_gradient_descent
    with pytest.raises(JaxvizError, match="whole number >= 1"):  # 0 said ">= 0", then "between 1 and ..."
        projected_gradient_descent(m, None, jnp.full((1, 16, 16, 3), 0.5), jnp.asarray([1]), eps=0.1, steps=0)
