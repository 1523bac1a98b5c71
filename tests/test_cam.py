"""Truth tests for CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM (exact values on the bundled tiny
model, peer conventions, the real networks). Every model kind: tests/test_attribution_any_model.py."""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import cam as camlib
from jaxviz import saliency as sal
from jaxviz.errors import JaxvizError
from jaxviz.images import load_images
from jaxviz.targets import Target
from tests.conftest import make_tiny_model


def J(fn):
    """jit a technique (compiling once beats op-by-op dispatch of a Flax model by far)."""
    names = inspect.signature(fn).parameters
    static = [n for n in ("layer", "samples", "steps", "chunk", "noise", "relu", "resize") if n in names]
    positional = [n for n, v in names.items() if v.kind == v.POSITIONAL_OR_KEYWORD]
    return jax.jit(fn, static_argnums=(0, 3) if len(positional) > 3 else (0,), static_argnames=static)


def _assert_positive_multiple(a, b, rtol=1e-3):
    """a == s * b for one s > 0 per image (both (N, H, W))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    for ai, bi in zip(a, b):
        assert bi.max() > 0, "empty map: the check would be vacuous"
        scale = (ai * bi).sum() / (bi * bi).sum()
        assert scale > 0
        np.testing.assert_allclose(ai, scale * bi, rtol=rtol, atol=rtol * ai.max())


def test_grad_cam_exact_values_on_tiny_model(rng):
    """Grad-CAM = ReLU(sum_k mean(dS/dA_k) A_k), recomputed here from jax.grad of the full network."""
    model = make_tiny_model(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 12, 3)).astype(np.float32))
    index = jnp.array([1, 4])
    got = J(camlib.grad_cam)(model, model.params, x, layer="features.4", index=index)
    # an independent split of the network: A by the plain forward pass, the rest written by hand
    _, state = model.module.apply({"params": model.params}, x, capture_intermediates=True,
                                  mutable=["intermediates"])
    acts = state["intermediates"]["features.4"]["__call__"][0]
    head = model.params["classifier.0"]

    def tail(a):  # classifier.0 (1x1 conv) -> ReLU -> global average pool
        z = jnp.einsum("nhwc,co->nhwo", a, head["kernel"][0, 0]) + head["bias"]
        return jax.nn.relu(z).mean(axis=(1, 2))
    np.testing.assert_allclose(tail(acts), model.apply(model.params, x), rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda a: jnp.take_along_axis(tail(a), index[:, None], -1).sum())(acts)
    raw = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", acts, grads.mean(axis=(1, 2))))
    assert raw.shape == (2, 8, 6)
    want = jax.image.resize(raw, (2, 16, 12), "bilinear")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got.shape == (2, 16, 12) and float(got.min()) >= 0
    # peer conventions: the signed map at the layer's resolution (Captum's LayerGradCam defaults)
    signed = J(camlib.grad_cam)(model, model.params, x, layer="features.4", index=index, relu=False, resize=None)
    np.testing.assert_allclose(signed, jnp.einsum("nhwc,nc->nhw", acts, grads.mean(axis=(1, 2))),
                               rtol=1e-5, atol=1e-7)
    assert float(signed.min()) < 0  # really signed
    nearest = J(camlib.grad_cam)(model, model.params, x, layer="features.4", index=index, resize="nearest")
    np.testing.assert_allclose(nearest, np.repeat(np.repeat(np.asarray(raw), 2, 1), 2, 2), rtol=1e-5, atol=1e-7)


def test_cam_equals_grad_cam_on_tiny_model(rng):
    model = make_tiny_model(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 20, 3)).astype(np.float32))
    index = jnp.array([0, 3])
    c = J(camlib.cam)(model, model.params, x, layer="classifier.1", index=index)
    g = J(camlib.grad_cam)(model, model.params, x, layer="classifier.1", index=index)
    np.testing.assert_allclose(c, g * (8 * 10), rtol=1e-4, atol=1e-6)  # scale = h * w of the map


def test_grad_cam_plus_plus_matches_reference_formula(rng):
    model = make_tiny_model(1)
    x = jnp.asarray(rng.normal(size=(1, 16, 16, 3)).astype(np.float32))
    got = J(camlib.grad_cam_plus_plus)(model, model.params, x, Target(index=2), layer="features.4")
    acts, g = J(camlib.layer_gradients)(model, model.params, x, Target(index=2), layer="features.4")
    a, g = np.asarray(acts, np.float64), np.asarray(g, np.float64)
    # pytorch-grad-cam's GradCAMPlusPlus.get_cam_weights, in numpy (NHWC), without its 1e-7
    s = a.sum(axis=(1, 2))[:, None, None, :]
    denom = 2 * g ** 2 + s * g ** 3
    aij = g ** 2 / np.where(denom != 0, denom, 1.0)
    aij = np.where(g != 0, aij, 0)
    w = (np.maximum(g, 0) * aij).sum(axis=(1, 2))
    raw = np.maximum(np.einsum("nhwc,nc->nhw", a, w), 0)
    want = jax.image.resize(jnp.asarray(raw, jnp.float32), (1, 16, 16), "bilinear")
    assert float(want.max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * float(want.max()))


def test_batch_and_targets_equal_loop_and_neuron_target(rng):
    model = make_tiny_model(0)
    x = jnp.asarray(rng.normal(size=(3, 16, 20, 3)).astype(np.float32))
    index = jnp.array([2, 0, 4])
    fns = {
        "gradcam": lambda x, i: J(camlib.grad_cam)(model, model.params, x, layer="features.1", index=i),
        "gradcam++": lambda x, i: J(camlib.grad_cam_plus_plus)(model, model.params, x, layer="features.4", index=i),
        "cam": lambda x, i: J(camlib.cam)(model, model.params, x, layer="classifier.1", index=i),
        "guided-gradcam": lambda x, i: J(camlib.guided_grad_cam)(model, model.params, x, layer="features.4", index=i),
        "neuron": lambda x, i: J(camlib.grad_cam)(model, model.params, x, Target(index=1, layer="features.4"),
                                               layer="features.1", index=i),
    }
    for name, fn in fns.items():
        fn = jax.jit(fn)
        batch = fn(x, index)
        loop = np.stack([fn(x[i:i + 1], index[i:i + 1])[0] for i in range(3)])
        assert batch.shape == (3, 16, 20)
        np.testing.assert_allclose(batch, loop, rtol=1e-5, atol=1e-6, err_msg=name)


def test_guided_grad_cam_is_guided_backprop_times_grad_cam(rng):
    model = make_tiny_model(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)).astype(np.float32))
    index = jnp.array([1, 2])
    gb = J(sal.guided_gradients)(model, model.params, x, index=index)
    for resize in ("bilinear", "nearest"):  # nearest: Captum's GuidedGradCam
        got = J(camlib.guided_grad_cam)(model, model.params, x, layer="features.4", index=index, resize=resize)
        gc = J(camlib.grad_cam)(model, model.params, x, layer="features.4", index=index, resize=resize)
        np.testing.assert_allclose(got, np.abs(np.asarray(gb) * np.asarray(gc)[..., None]).max(-1),
                                   rtol=1e-5, atol=1e-8)
    with pytest.raises(JaxvizError, match="resize"):
        camlib.guided_grad_cam(model, model.params, x, layer="features.4", resize=None)


def test_clear_errors_for_misuse(rng):
    model = make_tiny_model(0)
    x = jnp.asarray(rng.normal(size=(1, 16, 16, 3)).astype(np.float32))
    with pytest.raises(JaxvizError, match="no spatial map"):
        camlib.grad_cam(model, model.params, x, layer="classifier.2")
    with pytest.raises(JaxvizError, match="must come after"):
        camlib.grad_cam(model, model.params, x, Target(index=0, layer="features.1"), layer="features.4")
    with pytest.raises(JaxvizError, match="explains a class"):
        camlib.cam(model, model.params, x, Target(index=0, layer="features.4"))
    with pytest.raises(JaxvizError, match="unknown resize"):
        camlib.grad_cam(model, model.params, x, resize="bicubic")
    # a layer that is empty at this input size: the smallest size that works is named
    with pytest.raises(JaxvizError, match="smallest input that works is 2 px"):
        camlib.grad_cam(model, model.params, x[:, :1, :1], layer="features.4")


def test_cam_equals_grad_cam_on_squeezenet_final_conv(squeezenet):
    images = load_images(["chelsea", "coffee"], 160)
    x = squeezenet.preprocess(jnp.asarray(images))
    for index in (None, jnp.array([281, 967])):  # predicted, then tabby and espresso
        c = J(camlib.cam)(squeezenet, squeezenet.params, x, layer="classifier.2", index=index)
        g = J(camlib.grad_cam)(squeezenet, squeezenet.params, x, layer="classifier.2", index=index)
        _assert_positive_multiple(c, g)
    assert camlib.cam_weights(squeezenet) is None


def test_cam_equals_grad_cam_on_lite0_head(lite0):
    images = load_images(["chelsea"], 128)
    x = lite0.preprocess(jnp.asarray(images))
    weights = camlib.cam_weights(lite0)
    assert weights.shape == (1280, 1000)
    c = J(camlib.cam)(lite0, lite0.params, x, layer="head", weights=weights, index=jnp.array([281]))
    g = J(camlib.grad_cam)(lite0, lite0.params, x, Target(index=281), layer="head")
    _assert_positive_multiple(c, g)
