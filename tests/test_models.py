"""Models: reference predictions on real weights, layer names, pooling semantics, splitting."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.images import load_images
from jaxviz.models.layers import adaptive_avg_pool, max_pool
from jaxviz.models.registry import MODELS, Model, get_spec, init_params, layer_shapes

# Issue 2's reference numbers: PIL bicubic resize straight to 224x224, top-1 class and probability.
REFERENCE = {
    "squeezenet1_1": {"chelsea": (285, 0.716), "coffee": (967, 0.963)},
    "efficientnet_lite0": {"chelsea": (285, 0.771), "coffee": (967, 0.900)},
}


@pytest.mark.parametrize("fixture", ["squeezenet", "lite0"])
def test_reference_predictions(fixture, request):
    model = request.getfixturevalue(fixture)
    images = load_images(["chelsea", "coffee"], 224)
    probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(model.params, model.preprocess(images))))
    for (name, (index, prob)), p in zip(REFERENCE[model.name].items(), probs):
        assert p.argmax() == index, name
        assert abs(p[index] - prob) <= 0.005, (name, p[index])


def test_vgg19_caffe_is_a_feature_extractor(vgg19):
    x = vgg19.preprocess(load_images(["chelsea"], 64))
    features = vgg19.apply(vgg19.params, x)
    assert features.shape == (1, 2, 2, 512)
    relu = vgg19.apply(vgg19.params, x, stop="relu4_2")
    assert relu.shape == (1, 8, 8, 512) and float(relu.min()) == 0.0 and float(relu.max()) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_and_splits(name):
    """Running to a layer and on from it equals the full run, for every model (random weights)."""
    spec = get_spec(name)
    model = Model(spec, init_params(spec, input_size=64), spec.module())
    x = jax.random.normal(jax.random.key(1), (2, 64, 48, 3))  # non-square, batch 2
    full, acts = model.apply(model.params, x, capture=(spec.feature_layer,))
    resumed = model.apply(model.params, acts[spec.feature_layer], start=spec.feature_layer)
    np.testing.assert_allclose(resumed, full, rtol=1e-5, atol=1e-5)
    assert model.apply(model.params, x, stop=spec.feature_layer).shape == acts[spec.feature_layer].shape


def test_layer_aliases_resolve():
    vgg = get_spec("vgg19")
    assert vgg.resolve_layer("conv5_4") == "features.34"
    assert vgg.resolve_layer("relu4_2") == "features.22"
    assert vgg.resolve_layer("pool3") == "features.18"
    squeeze = get_spec("squeezenet1_1")
    assert squeeze.resolve_layer("fire9") == "features.12"
    assert squeeze.resolve_layer("fire2") == "features.3"
    assert squeeze.resolve_layer("conv10") == "classifier.1"
    with pytest.raises(JaxvizError, match="did you mean"):
        squeeze.resolve_layer("features.13x")
    with pytest.raises(JaxvizError, match="unknown model"):
        get_spec("resnet50")


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


def test_injected_activation_is_used(tiny_model):
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    identity = tiny_model.with_activations(relu=lambda v: v)
    # Same params, other non-linearity -> a different function; relu itself -> identical.
    assert not np.allclose(identity.apply(identity.params, x), tiny_model.apply(tiny_model.params, x))
    same = tiny_model.with_activations(relu=jax.nn.relu)
    np.testing.assert_array_equal(same.apply(same.params, x), tiny_model.apply(tiny_model.params, x))


def test_preprocess_roundtrip(rng):
    images = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
    for spec in MODELS.values():
        x = spec.preprocessing(jnp.asarray(images))
        np.testing.assert_allclose(spec.preprocessing.invert(x), images, atol=1e-5)
    # Caffe order: BGR, 0-255, mean subtracted.
    caffe = get_spec("vgg19_caffe").preprocessing(jnp.asarray(images))
    np.testing.assert_allclose(caffe[..., 0], images[..., 2] * 255 - 103.939, atol=1e-3)
