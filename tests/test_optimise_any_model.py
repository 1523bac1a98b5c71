"""Optimising the input on any model: the bundled tiny CNN, a user's linen CNN (residual add,
BatchNorm), a user's nnx CNN and the bundled ResNet-18 (the ``any_model`` fixture), and a plain
apply_fn where no layer is needed (class visualisation, FGSM/PGD, SimBA).

Truth checks against computations that do not go through jaxviz's adapters: logits and activations
from the user's own module (``module.apply`` with ``capture_intermediates`` for linen, the nnx
module called directly, the apply_fn itself) and the preprocessing written out by hand. FGSM equals
clip(x + eps sign(grad CE)); PGD stays in the eps-ball and the box and reports what a re-prediction
of its 8-bit images says; one class-visualisation step is the hand-computed normalised-gradient
step; channel visualisation, inversion and DeepDream move their objectives the right way;
batch == single for every stochastic technique (one key shared by every image); non-square sizes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import adversarial as adv
from jaxviz import objectives as obj
from jaxviz.blackbox import simba
from jaxviz.classviz import channel_visualization, class_visualization
from jaxviz.dream import deepdream
from jaxviz.errors import JaxvizError
from jaxviz.interface import LinenModel, NnxModel
from jaxviz.inversion import invert
from jaxviz.models.bundled import BundledModel
from tests.user_models import LinenCNN, NnxCNN, apply_fn_model

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision, as every test model declares
STD = np.array([0.229, 0.224, 0.225], np.float32)
LO, HI = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD
# a spatial layer of each (ResNet-18's by its alias: layer2 = layer2.1)
LAYER = {"bundled": "features.4", "linen": "block", "nnx": "layers.1", "resnet18": "layer2"}
SIZE = (16, 20)  # non-square everywhere


def _kind(model) -> str:
    if isinstance(model, BundledModel):
        return "resnet18" if model.name == "resnet18" else "bundled"
    if isinstance(model, LinenModel):
        return "linen"
    if isinstance(model, NnxModel):
        return "nnx"
    return "apply_fn"


def _nnx_module(model):
    """The user's nnx CNN rebuilt from the same seed (the fixture uses seed 0), in eval mode."""
    from flax import nnx
    module = NnxCNN(nnx.Rngs(0))
    module.eval()
    return module


def reference_logits(model):
    """logits(x) of preprocessed x, computed by the user's own code, not by jaxviz's adapter
    (jitted: only for speed)."""
    kind = _kind(model)
    if kind in ("bundled", "resnet18"):
        return jax.jit(lambda x: model.module.apply({"params": model.params}, x))
    if kind == "linen":
        return jax.jit(lambda x: LinenCNN().apply(model.params, x))
    if kind == "nnx":
        module = _nnx_module(model)
        return jax.jit(lambda x: module(x))
    return jax.jit(lambda x: model.apply_fn(model.params, x))


def reference_activation(model, x, layer):
    """The layer's output by the user's own code: linen's capture_intermediates, or the nnx
    module's layers called by hand (layers.1 is the second conv's output, before its ReLU)."""
    kind = _kind(model)
    if kind == "nnx":
        m = _nnx_module(model)
        h = jax.nn.relu(m.bn(m.stem(x)))
        return m.layers[1](jax.nn.relu(m.layers[0](h)))
    bundled = kind in ("bundled", "resnet18")
    module, variables = (model.module, {"params": model.params}) if bundled else (LinenCNN(), model.params)
    path = model.resolve_layer(layer).split("/")

    @jax.jit
    def run(x):
        _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        node = state["intermediates"]
        for part in path:
            node = node[part]
        return node["__call__"][0]
    return run(x)


def preprocess(images01):
    return (jnp.asarray(images01) - MEAN) / STD


def _images(n=2, size=SIZE, seed=0):
    """8-bit images with saturated rows, so clipping at 0 and 1 matters."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, *size, 3)).astype(np.float32) / 255.0
    x[:, :2] = 0.0
    x[:, -2:] = 1.0
    return x


def both(check, resnet18_slow: bool = True):
    """Run ``check(model)`` on the ``any_model`` matrix and, in a second test, on a plain apply_fn
    (techniques that need no layer). ResNet-18's case runs under -m slow unless ``resnet18_slow``
    is False: these techniques use only the model's gradient, which test_attribution_any_model
    checks on ResNet-18 against finite differences; one attack still runs on it by default."""
    def on_any_model(any_model):
        check(any_model)
    if resnet18_slow:
        on_any_model = pytest.mark.slow_on_resnet18(on_any_model)

    def on_apply_fn():
        check(apply_fn_model())
    on_any_model.__doc__ = on_apply_fn.__doc__ = check.__doc__
    return on_any_model, on_apply_fn


# ------------------------------------------------------------------ attacks (no layer needed)

def _fgsm(classifier):
    """FGSM == clip(x + eps sign(grad CE)), the gradient from the user's own logits."""
    x = _images(3)
    logits = reference_logits(classifier)
    labels = np.asarray(jnp.argmax(logits(preprocess(x)), -1))
    eps = 3 / 255
    ce = lambda z: -jnp.take_along_axis(jax.nn.log_softmax(logits(preprocess(z))), labels[:, None], 1).sum()
    g = np.asarray(jax.jit(jax.grad(ce))(jnp.asarray(x)))
    expected = np.clip(x + eps * np.sign(g), 0, 1)
    got = np.asarray(adv.fgsm(classifier, None, x, labels, eps=eps))
    # exact where the gradient is clearly non-zero (elsewhere float rounding may flip a sign)
    clear = np.abs(g) > 1e-4 * np.abs(g).max()
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert np.abs(got - x).max() <= eps + 1e-7 and got.min() >= 0 and got.max() <= 1


test_fgsm, test_fgsm_apply_fn = both(_fgsm)


def test_fgsm_on_a_bare_apply_fn():
    """A bare apply_fn (no declared facts: the input is used as is) with its params."""
    model = apply_fn_model()
    x = _images(2)
    f = lambda z: model.apply_fn(model.params, z)
    labels = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
    g = jax.grad(lambda z: -jnp.take_along_axis(jax.nn.log_softmax(f(z)), labels[:, None], 1).sum())(jnp.asarray(x))
    got = adv.fgsm(model.apply_fn, model.params, x, labels, eps=0.01)
    np.testing.assert_allclose(got, np.clip(x + 0.01 * np.sign(np.asarray(g)), 0, 1), atol=1e-7)
    result = adv.attack(model.apply_fn, model.params, x, method="ifgsm", eps=0.02, steps=3)
    assert result.images.shape == x.shape and result.report.model


def _pgd_ball_box_report(classifier):
    """PGD-Linf stays in the eps-ball and [0, 1]; its report is a re-prediction of its 8-bit images."""
    x = _images(3)
    eps = 6 / 255
    result = adv.attack(classifier, None, x, method="pgd-linf", eps=eps, steps=6, key=jax.random.key(0))
    z = result.images
    np.testing.assert_array_equal(z, np.round(z * 255).astype(np.float32) / np.float32(255))  # 8-bit
    assert z.min() >= 0 and z.max() <= 1
    assert np.abs(z - x).max() <= eps + 1e-6
    logits = reference_logits(classifier)
    label = np.asarray(jnp.argmax(logits(preprocess(x)), -1))
    final = np.asarray(jnp.argmax(logits(preprocess(z)), -1))
    np.testing.assert_array_equal(result.report.label, label)
    np.testing.assert_array_equal(result.report.final_class, final)
    np.testing.assert_array_equal(result.report.success, final != label)


test_pgd_ball_box_report, test_pgd_ball_box_report_apply_fn = both(_pgd_ball_box_report, resnet18_slow=False)


def _pgd_batch_single(classifier):
    """One key shared by every image: image i's random start and run do not depend on the batch."""
    x = _images(3, seed=1)
    kw = dict(method="pgd-linf", eps=8 / 255, steps=4, quantize=False, early_stop=False, key=jax.random.key(7))
    batch = adv.attack(classifier, None, x, target=[1, 2, 3], **kw)
    one = adv.attack(classifier, None, x[2:], target=[3], **kw)  # the last image alone
    np.testing.assert_allclose(one.images[0], batch.images[2], atol=2e-6)
    # the start is random (not the original) and image i's depends on its key only
    start = np.asarray(adv.random_init(jax.random.key(7), jnp.asarray(x), norm="linf", eps=8 / 255))
    alone = np.asarray(adv.random_init(jax.random.key(7), jnp.asarray(x[2:]), norm="linf", eps=8 / 255))
    np.testing.assert_array_equal(start[2], alone[0])
    assert not np.allclose(start, x)


test_pgd_batch_single, test_pgd_batch_single_apply_fn = both(_pgd_batch_single)


def _simba_batch_single(classifier):
    """SimBA with one shared key: batch == single; the report re-predicts the returned images."""
    x = _images(2, seed=2)
    batch = simba(classifier, x, basis="pixel", max_queries=30, key=jax.random.key(3))
    for i in range(2):
        one = simba(classifier, x[i:i + 1], basis="pixel", max_queries=30, key=jax.random.key(3))
        np.testing.assert_array_equal(one.images[0], batch.images[i])
        assert one.report.queries[0] == batch.report.queries[i]
    p = np.asarray(jax.nn.softmax(reference_logits(classifier)(preprocess(batch.images))))
    np.testing.assert_array_equal(batch.report.final_class, p.argmax(1))
    np.testing.assert_allclose(batch.report.final_confidence, p.max(1), rtol=1e-4)


test_simba_batch_single, test_simba_batch_single_apply_fn = both(_simba_batch_single)


# ------------------------------------------------------------------ class visualisation (no layer needed)

def _classviz_step(classifier):
    """x1 = clip(x0 - lr g / ||g||, lo, hi), g = grad of (-s_c + lambda ||x||^2), s_c from the
    user's own logits: one engine step without jitter or blur."""
    x0 = jnp.asarray(0.3 * np.random.default_rng(3).normal(size=(2, *SIZE, 3)), jnp.float32)
    classes, lr, lam = np.array([1, 4]), 0.7, 0.05
    logits = reference_logits(classifier)
    loss = lambda z: (-logits(z)[jnp.arange(2), classes] + lam * jnp.sum(z * z, axis=(1, 2, 3))).sum()
    g = np.asarray(jax.jit(jax.grad(loss))(x0))
    step = g / np.linalg.norm(g.reshape(2, -1), axis=1)[:, None, None, None]
    expected = np.clip(np.asarray(x0) - lr * step, LO, HI)
    res = class_visualization(classifier, None, classes, init=x0, steps=1, lr=lr, l2=lam, blur_every=0,
                              jitter_px=0)
    np.testing.assert_allclose(res.images, expected, rtol=1e-4, atol=1e-5)
    expected_loss = -np.asarray(logits(x0))[np.arange(2), classes] + lam * np.sum(np.asarray(x0) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(res.losses[0], expected_loss, rtol=1e-4, atol=1e-5)


test_classviz_step, test_classviz_step_apply_fn = both(_classviz_step)


def _classviz_batch_single(classifier):
    """Noise start and jitter from one shared key: image i of a batch == class i alone."""
    kw = dict(size=SIZE, steps=4, lr=0.5, jitter_px=3, blur_every=2, key=jax.random.key(5))
    batch = class_visualization(classifier, None, [0, 3], **kw)
    one = class_visualization(classifier, None, [3], **kw)  # the second image alone
    np.testing.assert_allclose(one.images[0], batch.images[1], rtol=1e-4, atol=1e-5)
    logits = np.asarray(reference_logits(classifier)(batch.images))
    assert np.isfinite(logits).all()
    assert batch.images.shape == (2, *SIZE, 3)
    assert np.all(np.asarray(batch.images) >= LO - 1e-5) and np.all(np.asarray(batch.images) <= HI + 1e-5)


test_classviz_batch_single, test_classviz_batch_single_apply_fn = both(_classviz_batch_single)


def test_layer_techniques_on_a_plain_apply_fn_say_they_need_a_layer():
    model = apply_fn_model()
    x = jnp.zeros((1, *SIZE, 3))
    for call in (lambda: channel_visualization(model, None, "conv", [0], size=SIZE, steps=1),
                 lambda: invert(model, None, x, "conv", steps=1),
                 lambda: deepdream(model, None, x, "conv", octaves=1, steps=1)):
        with pytest.raises(JaxvizError, match="without named layers"):
            call()


# ------------------------------------------------------------------ techniques that need a layer

def _top_channels(model, layer, k=2):
    """The k channels most active on the mid-grey image (the Fourier start is close to it)."""
    grey = preprocess(jnp.full((1, *SIZE, 3), 0.5))
    acts = np.asarray(reference_activation(model, grey, layer)).mean(axis=(0, 1, 2))
    return [int(c) for c in np.argsort(acts)[::-1][:k]]


def test_channel_visualisation_raises_the_channel_mean(any_model):
    layer = LAYER[_kind(any_model)]
    channels = _top_channels(any_model, layer)
    init = preprocess(0.5 + 0.05 * jax.random.normal(jax.random.key(0), (2, *SIZE, 3)))
    for param in ("fourier", "pixels"):
        res = channel_visualization(any_model, None, layer, channels, init=init, steps=8, lr=0.05,
                                    parameterization=param, jitter_px=2)
        before = np.asarray(reference_activation(any_model, init, layer))
        after = np.asarray(reference_activation(any_model, res.images, layer))
        for i, c in enumerate(channels):
            assert after[i, ..., c].mean() > before[i, ..., c].mean(), (param, c)
        assert np.all(np.asarray(res.images) >= LO - 1e-5) and np.all(np.asarray(res.images) <= HI + 1e-5)


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_channel_visualisation_fourier_noise_start_batch_equals_single(any_model):
    layer = LAYER[_kind(any_model)]
    channels = _top_channels(any_model, layer, 2)
    kw = dict(size=SIZE, steps=4, lr=0.05, jitter_px=2, key=jax.random.key(11))
    batch = channel_visualization(any_model, None, layer, channels, **kw)
    one = channel_visualization(any_model, None, layer, channels[1:], **kw)  # the second image alone
    np.testing.assert_allclose(one.images[0], batch.images[1], rtol=1e-4, atol=1e-5)
    # the unit objective reads (y, x) of a non-square map the right way round
    h, w = any_model.layer_shapes(SIZE)[any_model.resolve_layer(layer)][:2]
    unit = (h - 1, w - 1)
    res = channel_visualization(any_model, None, layer, channels[:1], unit=unit, init=batch.images[:1], steps=1,
                                lr=1e-9, parameterization="pixels", jitter_px=0)
    acts = np.asarray(reference_activation(any_model, batch.images[:1], layer))
    np.testing.assert_allclose(-res.losses[0, 0], acts[0, h - 1, w - 1, channels[0]], rtol=1e-4, atol=1e-5)


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_inversion_decreases_the_feature_distance(any_model):
    layer = LAYER[_kind(any_model)]
    x0 = preprocess(_images(2, seed=4))
    res = invert(any_model, None, x0, layer, steps=15, lr=0.1, tv_weight=0.0, key=jax.random.key(1))
    target = np.asarray(reference_activation(any_model, x0, layer))

    def distance(x):
        d = np.asarray(reference_activation(any_model, x, layer)) - target
        return (d ** 2).reshape(2, -1).sum(1) / (target ** 2).reshape(2, -1).sum(1)
    before, after = (np.asarray(v) for v in res.extras["feature_loss"])
    np.testing.assert_allclose(after, distance(res.images), rtol=1e-3, atol=1e-6)
    assert np.all(after < 0.8 * before)
    # batch == single (the noise start comes from the shared key)
    one = invert(any_model, None, x0[1:], layer, steps=15, lr=0.1, tv_weight=0.0, key=jax.random.key(1))
    np.testing.assert_allclose(one.images[0], res.images[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_deepdream_raises_the_layer_norm_and_batch_equals_single(any_model):
    layer = LAYER[_kind(any_model)]
    x = preprocess(_images(2, size=(24, 28), seed=5))
    kw = dict(octaves=2, octave_scale=1.4, steps=3, step=0.05, jitter_px=2, key=jax.random.key(2))
    d = deepdream(any_model, None, x, layer, **kw)
    energy = lambda z: 0.5 * (np.asarray(reference_activation(any_model, z, layer)) ** 2).reshape(2, -1).sum(1)
    assert np.all(energy(d) > energy(x))
    assert d.shape == x.shape
    assert np.all(np.asarray(d) >= LO - 1e-5) and np.all(np.asarray(d) <= HI + 1e-5)
    one = deepdream(any_model, None, x[1:], layer, **kw)  # the second image alone
    np.testing.assert_allclose(one[0], d[1], rtol=1e-4, atol=1e-5)


def test_objectives_of_a_layer_equal_the_users_activation(any_model):
    """channel / deepdream / feature_match objectives evaluate the user's own activation."""
    layer = LAYER[_kind(any_model)]
    x = preprocess(_images(2, seed=6))
    acts = np.asarray(reference_activation(any_model, x, layer))
    np.testing.assert_allclose(obj.evaluate(obj.channel(any_model, any_model.params, layer, [0, 3]), x),
                               [acts[0, ..., 0].mean(), acts[1, ..., 3].mean()], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obj.evaluate(obj.deepdream(any_model, any_model.params, layer), x),
                               0.5 * (acts ** 2).reshape(2, -1).sum(1), rtol=1e-5)
    np.testing.assert_allclose(obj.evaluate(obj.feature_match(any_model, any_model.params, layer, x), x), 0.0,
                               atol=1e-10)
